"""NACF's training loss (Yang et al., AAAI 2021, Eq. 8):

    L_NACF = L_len + L_mlm + λ·L_vis

- L_len (Eq. 3): KL(L* || L) between the item's distribution of training-caption
  lengths L* (the dataset's ``length_target``) and the predicted distribution L.
- L_mlm (Eq. 4-5): per caption, a masking ratio drawn uniformly from [β_l, β_h];
  that many words (at least one) are replaced by <mask>; NLL on the masked words.
- L_vis (Eq. 6-7): the input is all <vis>; the target keeps the visual words
  (nouns and verbs by the manifest's NLTK tags, ``data/visual_words.py``) and is
  <mask> elsewhere; NLL on every position, so the model learns where a template
  has no visual word.  Forms of "be" are not visual words unless
  ``--visual-words-include-be``.
λ = 0 gives NA-B.  Each term is a mean (over captions / predicted tokens); the
criterion reports sample_size 1, as fairseq's nat_loss does.

``--glat-ratio λ > 0`` (not in the paper; ``criterions/glancing.py``) replaces Eq. 4-5's random
masking by glancing: a first pass without gradient on all ``<mask>`` (MP's first pass), d = the
words it gets wrong, S = round(λ·d) target words shown at random positions (GLAT Eq. 6), the
others masked and predicted (L_mlm on them).  L_len and L_vis are unchanged.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion

from ..errors import DataError, OptionError
from ..data.visual_words import BE_FORMS, NOUN, VERB
from .common import label_smoothed_nll, log_bits, logged_total, random_mask, random_positions
from .glancing import GlancingConfig, check_glancing, glance_count, glancing_ratio


@dataclass
class NACFLossConfig(GlancingConfig):
    vis_weight: float = field(default=0.8, metadata={"help": "λ of L_vis (Eq. 8); 0 = NA-B"})
    mask_ratio_low: float = field(default=0.35, metadata={"help": "β_l (MSR-VTT 0.35, MSVD 0)"})
    mask_ratio_high: float = field(default=0.9, metadata={"help": "β_h (MSR-VTT 0.9, MSVD 1)"})
    length_weight: float = field(default=1.0, metadata={"help": "weight of L_len"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of L_mlm and L_vis"})
    visual_words_include_be: bool = field(
        default=False, metadata={"help": "count forms of 'be' (is, are, ...) as visual words (off, as the reference)"})


def nar_targets(target, eos, pad):
    """fairseq targets (words + </s> + pad) → NAR targets (words + pad), lengths."""
    words = target.masked_fill(target.eq(eos), pad)
    lengths = words.ne(pad).sum(1)
    return words[:, : int(lengths.max())], lengths


def smoothed_nll(logits, target, select, eps):
    """Mean over the selected positions of (1-ε)·NLL + ε·uniform cross-entropy (``common``)."""
    loss, nll = label_smoothed_nll(F.log_softmax(logits[select].float(), dim=-1), target[select], eps)
    return loss.mean(), nll.mean()


@register_criterion("nacf_loss", dataclass=NACFLossConfig)
class NACFLoss(FairseqCriterion):
    def __init__(self, task, vis_weight, mask_ratio_low, mask_ratio_high, length_weight, label_smoothing,
                 visual_words_include_be, glat_ratio=0.0, glat_ratio_final=-1.0, glat_anneal_updates=0):
        super().__init__(task)
        self.glat = GlancingConfig(glat_ratio=glat_ratio, glat_ratio_final=glat_ratio_final,
                                   glat_anneal_updates=glat_anneal_updates)
        check_glancing(self.glat)
        if not 0 <= mask_ratio_low <= mask_ratio_high <= 1:
            raise OptionError(f"need 0 <= β_l <= β_h <= 1, got {mask_ratio_low}, {mask_ratio_high}")
        self.vis_weight, self.low, self.high = vis_weight, mask_ratio_low, mask_ratio_high
        self.length_weight, self.eps = length_weight, label_smoothing
        d = task.target_dictionary
        self.pad, self.eos, self.unk = d.pad(), d.eos(), d.unk()
        self.mask, self.vis = d.index("<mask>"), d.index("<vis>")
        self.be_ids = [] if visual_words_include_be else [d.index(w) for w in BE_FORMS if d.index(w) != d.unk()]

    def visual_targets(self, words, pos):
        """Eq. 6: the word at noun/verb positions, <mask> elsewhere (pad stays pad;
        <unk>, e.g. rare MSR-VTT words, is never a visual word)."""
        visual = (pos.eq(NOUN) | pos.eq(VERB)) & words.ne(self.unk)
        for b in self.be_ids:
            visual &= words.ne(b)
        return words.masked_fill(~visual & words.ne(self.pad), self.mask)

    def forward(self, model, sample, reduce=True):
        words, lengths = nar_targets(sample["target"], self.eos, self.pad)
        nonpad = words.ne(self.pad)
        encoder_out = model.forward_encoder(sample["net_input"])

        # L_len, Eq. 3: KL(L*||L) = Σ_j l*_j (log l*_j − log l_j)
        length_lprobs = model.forward_length(encoder_out)
        l_star = sample["length_target"]
        if l_star.size(1) != length_lprobs.size(1):
            raise ValueError(f"length target has {l_star.size(1)} classes, the model predicts {length_lprobs.size(1)}")
        len_loss = F.kl_div(length_lprobs, l_star, reduction="batchmean")

        # L_mlm, Eq. 4-5 (or glancing: module docstring)
        ratio = glancing_ratio(self.glat, getattr(model, "num_updates", 0))
        glat = {}
        if ratio > 0 and model.training:
            with torch.no_grad():
                first = model.forward_decoder_nar(words.masked_fill(nonpad, self.mask), encoder_out)
                distance = (first.argmax(-1).ne(words) & nonpad).sum(1)
                shown = random_positions(nonpad, glance_count(distance, ratio))  # GLAT Eq. 6
            masked = nonpad & ~shown
            if not masked.any():  # λ = 1 and every word wrong: keep one loss position per batch
                masked = nonpad
            glat = {"glat_shown": shown.sum().float() / nonpad.sum(), "glat_wrong": distance.sum().float() / nonpad.sum()}
        else:
            masked = random_mask(words, lengths, self.low, self.high, self.pad) & nonpad
        logits = model.forward_decoder_nar(words.masked_fill(masked, self.mask), encoder_out)
        mlm_loss, mlm_nll = smoothed_nll(logits, words, masked, self.eps)

        loss = self.length_weight * len_loss + mlm_loss
        logging = {"mlm_loss": mlm_loss.data, "mlm_nll": mlm_nll.data, "len_loss": len_loss.data, **glat}

        # L_vis, Eq. 6-7: all-<vis> input, every non-pad position supervised
        if self.vis_weight > 0:
            if "target_pos" not in sample:
                raise DataError("L_vis needs POS tags: the manifest has no 'pos' column (or use --vis-weight 0)")
            pos = sample["target_pos"][:, : words.size(1)]  # aligned with target; </s> column dropped
            vis_logits = model.forward_decoder_nar(words.masked_fill(nonpad, self.vis), encoder_out)
            vis_loss, _ = smoothed_nll(vis_logits, self.visual_targets(words, pos), nonpad, self.eps)
            loss = loss + self.vis_weight * vis_loss
            logging["vis_loss"] = vis_loss.data

        logging.update({"loss": loss.data, "ntokens": sample["ntokens"], "nsentences": sample["nsentences"],
                        "sample_size": 1})
        return loss, 1, logging

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        n, total = len(logging_outputs), logged_total(logging_outputs)
        for key in ("loss", "mlm_loss", "mlm_nll", "len_loss", "vis_loss", "glat_shown", "glat_wrong"):
            if not any(key in log for log in logging_outputs):
                continue
            if key.startswith("glat"):  # the glancing fractions as they are
                metrics.log_scalar(key, total(key) / n, n, round=3)
            else:
                log_bits(key, total(key), n)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return False
