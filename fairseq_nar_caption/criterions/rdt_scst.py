"""RDT stage 2: guided self-critical sequence training (Eq. 14), ``--criterion rdt_scst``.

    ∇L_R(θ) ≈ −1/N_y Σ_j (R(y^{s_j}) − R(ŷ)) ∇ log p_θ(y^{s_j})

Per caption of the batch (as the reference's RL trainer: one noised forward pass):

1. x0 = the bits of the AR teacher's caption of the image (default, as the reference's
   ``USE_KD_TOKENS_AS_INPUT``; ``--gt-as-input``: the ground-truth caption); the task needs
   ``--hybrid-distill-split train_distill`` so the batch carries the teacher's captions;
   t' ~ U(0, 0.999); x_t by Eq. 1;
   f(x_t, γ(t'), G) gives per-slot word distributions p_θ;
2. samples y^{s_1..s_K}: one word per slot drawn from p_θ (``--num-samples`` K), plus, when
   the teacher's caption is available, the teacher's caption itself (N_y = K + 1);
   each is cut at its first </s>; log p_θ(y) = Σ of its slots' log-probabilities;
3. baseline ŷ: the greedy caption (argmax per slot) of the same pass;
4. R = CIDEr-D against all reference captions of the image, with document frequencies
   from the training split's references (the usual SCST corpus statistics), computed by
   pycocoevalcap's ``CiderScorer`` (the CIDEr-D of ``evaluation/coco_metrics``) on the
   whitespace-tokenised, lower-cased captions (no PTB/Java pass per batch);
5. loss = −1/N_y Σ_j (R_j − R(ŷ))·log p_θ(y^{s_j}), summed over the batch's captions.

Validation is the task's decode score, as for every model of the suite: ``--eval-cider`` (required)
decodes the validation split with the diffusion sampler (the task's ``--diffusion-steps``,
``--time-difference``) and logs its corpus CIDEr-D as ``cider``: ``--best-checkpoint-metric cider
--maximize-best-checkpoint-metric``.  The criterion itself adds nothing to a validation pass.

Step 1's draws and the encoder pass are stage 1's (``rdt_common``).
"""
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from torch import Tensor

from ..data.manifest import item_references
from ..errors import DataError, OptionError
from ..evaluation.coco_metrics import CorpusCiderD
from .common import logged_total
from .rdt_common import check_rdt_model, noised_inputs


@dataclass
class RDTSCSTConfig(FairseqDataclass):
    num_samples: int = field(default=5, metadata={"help": "K sampled captions per image (the teacher's is added)"})
    gt_as_input: bool = field(default=False, metadata={"help": "noise the ground-truth caption as x0 (default: the "
                                                               "AR teacher's, as the reference)"})
    no_teacher_sample: bool = field(default=False, metadata={"help": "do not add the teacher's caption to the "
                                                                     "samples (plain SCST)"})
    max_time: float = field(default=0.999, metadata={"help": "t' ~ U(0, max_time)"})
    reward_split: str = field(default="train", metadata={"help": "split whose references give CIDEr-D's "
                                                                 "document frequencies"})


@register_criterion("rdt_scst", dataclass=RDTSCSTConfig)
class RDTSCSTCriterion(FairseqCriterion):
    def __init__(self, task, num_samples, gt_as_input, no_teacher_sample, max_time, reward_split):
        super().__init__(task)
        if not getattr(task.cfg, "eval_cider", False):
            raise DataError("--criterion rdt_scst validates by decoding: set --eval-cider (with "
                            "--best-checkpoint-metric cider --maximize-best-checkpoint-metric)")
        if num_samples < 1:
            raise OptionError(f"--num-samples must be >= 1, got {num_samples}")
        self.k, self.teacher_as_input, self.teacher_sample = num_samples, not gt_as_input, not no_teacher_sample
        self.max_time, self.reward_split = max_time, reward_split
        self.dictionary = task.target_dictionary
        self._cider = None

    def cider(self) -> CorpusCiderD:
        if self._cider is None:
            import os
            refs = item_references(os.path.join(self.task.cfg.data, f"{self.reward_split}.tsv"))
            self._cider = CorpusCiderD(list(refs.values()))
        return self._cider

    def caption(self, model, row: Tensor) -> str:
        """Slot tokens → the caption text up to the first </s>."""
        ends = row.eq(model.eos).nonzero()
        n = int(ends[0]) if len(ends) else row.numel()
        return self.dictionary.string(row[:n].cpu())

    def forward(self, model, sample, reduce=True):
        check_rdt_model(model, "rdt_scst")
        use_teacher = "distill_target" in sample
        if (self.teacher_as_input or self.teacher_sample) and not use_teacher and model.training:
            raise OptionError("guided SCST needs the AR teacher's captions: set --hybrid-distill-split train_distill "
                             "(nar-caption-distill writes it), or --no-teacher-sample --gt-as-input")
        ids = sample.get("item_ids")
        gt = model.fixed_length(sample["target"], ids)
        teacher = model.fixed_length(sample["distill_target"], ids, "teacher caption") if use_teacher else None
        source = teacher if (self.teacher_as_input and teacher is not None) else gt
        x0 = model.to_bits(source)
        bsz = x0.size(0)
        if not model.training:  # validation: the task's --eval-cider decodes and scores (tasks/base.py)
            return torch.zeros((), device=x0.device), bsz, {"loss": 0.0, "nsentences": bsz, "sample_size": bsz,
                                                            "ntokens": bsz}
        refs = sample["references"]
        cider = self.cider()
        _, x_t, gamma, encoder_out, cascade = noised_inputs(model, sample, x0, self.max_time)  # Eq. 1
        logits, _ = model.denoise(x_t, gamma, encoder_out, None, cascade)
        lprobs = F.log_softmax(logits.float(), dim=-1)  # B x L x W

        greedy = lprobs.argmax(-1)
        baseline = cider.scores([self.caption(model, r) for r in greedy], refs)  # R(ŷ)
        samples = [torch.distributions.Categorical(logits=lprobs).sample() for _ in range(self.k)]
        if self.teacher_sample and teacher is not None:
            samples.append(teacher)  # the AR teacher's caption among the samples (N_y = K + 1)
        loss = x0.new_zeros(())
        total_reward = 0.0
        for y in samples:
            rewards = cider.scores([self.caption(model, r) for r in y], refs)
            total_reward += float(rewards.sum())
            slots = model.sentence_mask(y)
            logp = (lprobs.gather(-1, y.unsqueeze(-1)).squeeze(-1) * slots).sum(1)  # log p_θ(y)
            advantage = torch.tensor(rewards - baseline, dtype=logp.dtype, device=logp.device)
            loss = loss - (advantage * logp).sum() / len(samples)  # Eq. 14
        logging = {"loss": loss.data, "reward": total_reward / len(samples), "baseline": float(baseline.sum()),
                   "nsentences": bsz, "sample_size": bsz, "ntokens": bsz}
        return loss, bsz, logging

    @staticmethod
    def reduce_metrics(logging_outputs: List[dict]) -> None:
        total = logged_total(logging_outputs)
        n = total("sample_size")
        if not n:
            return
        metrics.log_scalar("loss", total("loss") / n, n, round=4)
        if any("reward" in log for log in logging_outputs):  # training passes only
            metrics.log_scalar("reward", total("reward") / n, n, round=4)
            metrics.log_scalar("baseline", total("baseline") / n, n, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
