"""The DAG criterion (DA-Transformer, Huang et al., ICML 2022): −log P(Y | X) summed over every
path through the decoder's graph (Eq. 2-3; ``models/dag.py``'s forward programme, plain PyTorch),
normalised by the caption's length (words + </s>, M):

    L = −(1/M) log P(Y | X)    per caption, summed over the batch (``sample_size`` = captions)

- ``--label-smoothing ε``: (1 − ε)·L + ε·(the mean over the vertices of the cross-entropy to the
  uniform distribution, ``common.uniform_ce``), as the other criteria smooth.
- ``--glat-ratio λ > 0`` (GLAT on the graph, as DA-Transformer trains): a first pass without
  gradient, the most probable path of the target under it (Viterbi, ``dag_best_alignment``),
  d = the path vertices whose most probable token is not the target's, S = round(λ·d) target
  tokens chosen at random (GLAT Eq. 6) shown at their path vertices in place of the vertex query,
  and the loss computed on the second pass.  ``glancing.py`` gives λ and its annealing.

Logged in bits: ``loss`` and ``nll_loss`` per caption token; ``glat_shown`` / ``glat_wrong`` per
caption token when glancing.
"""
from dataclasses import dataclass, field

import torch
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion

from ..errors import OptionError
from ..models.dag import DAGModel, dag_best_alignment, dag_log_likelihood
from .common import log_bits, logged_total, random_positions, uniform_ce
from .glancing import GlancingConfig, check_glancing, glance_count, glancing_ratio


@dataclass
class DAGLossConfig(GlancingConfig):
    label_smoothing: float = field(default=0.0, metadata={"help": "ε of the uniform smoothing term"})


@register_criterion("dag_loss", dataclass=DAGLossConfig)
class DAGLossCriterion(FairseqCriterion):
    def __init__(self, task, label_smoothing=0.0, glat_ratio=0.0, glat_ratio_final=-1.0, glat_anneal_updates=0):
        super().__init__(task)
        self.glat = DAGLossConfig(label_smoothing=label_smoothing, glat_ratio=glat_ratio,
                                  glat_ratio_final=glat_ratio_final, glat_anneal_updates=glat_anneal_updates)
        check_glancing(self.glat)
        if not 0 <= label_smoothing < 1:
            raise OptionError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
        self.eps = label_smoothing
        self.pad = task.target_dictionary.pad()

    def glancing_pass(self, model, sample, target, lengths, ratio: float):
        """GLAT's two passes (module docstring): → (token log-probs, link log-probs of the second pass,
        tokens shown, first-pass distance), counts summed over the batch."""
        encoder_out = model.forward_encoder(sample["net_input"])
        with torch.no_grad():
            token_lp, link_lp = model.forward_graph(encoder_out)
            path = dag_best_alignment(token_lp, link_lp, target, lengths)  # B x T vertices, −1 beyond M
            valid = path.ge(0)
            at = path.clamp(min=0)
            wrong = token_lp.argmax(-1).gather(1, at).ne(target) & valid
            distance = wrong.sum(1)
            shown = random_positions(valid, glance_count(distance, ratio))  # GLAT Eq. 6
        n = token_lp.size(1)  # the tokens not shown go to a spare column n, dropped after the scatter
        glance = target.new_full((target.size(0), n + 1), self.pad)
        glance.scatter_(1, at.masked_fill(~shown, n), target.masked_fill(~shown, self.pad))
        glance = glance[:, :n]
        token_lp, link_lp = model.forward_graph(encoder_out, glance_tokens=glance)
        return token_lp, link_lp, int(shown.sum()), int(distance.sum())

    def forward(self, model, sample, reduce=True):
        if not isinstance(model, DAGModel):
            raise OptionError(f"--criterion dag_loss trains a DAG model (--arch dag_caption*), got "
                              f"{type(model).__name__}")
        target = sample["target"]
        lengths = target.ne(self.pad).sum(1)
        ratio = glancing_ratio(self.glat, getattr(model, "num_updates", 0))
        glat = {}
        if ratio > 0 and model.training:
            token_lp, link_lp, shown, distance = self.glancing_pass(model, sample, target, lengths, ratio)
            glat = {"glat_revealed": shown, "glat_distance": distance}
        else:
            token_lp, link_lp = model.forward_graph(model.forward_encoder(sample["net_input"]))
        nll = -dag_log_likelihood(token_lp, link_lp, target, lengths)  # B
        per_token = nll / lengths.float()
        loss_vec = per_token if self.eps == 0 else (1 - self.eps) * per_token + self.eps * uniform_ce(token_lp).mean(1)
        loss = loss_vec.sum()
        bsz = target.size(0)
        logging_output = {"loss": loss.data, "nll_loss": per_token.sum().data, "ntokens": int(lengths.sum()),
                          "nsentences": bsz, "sample_size": bsz, **glat}
        return loss, bsz, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = logged_total(logging_outputs)
        n = total("sample_size")
        if not n:
            return
        log_bits("loss", total("loss"), n)
        log_bits("nll_loss", total("nll_loss"), n)
        if any("glat_revealed" in log for log in logging_outputs):  # tokens shown / wrong per caption token
            tokens = max(total("ntokens"), 1)
            metrics.log_scalar("glat_shown", total("glat_revealed") / tokens, tokens, round=3)
            metrics.log_scalar("glat_wrong", total("glat_distance") / tokens, tokens, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
