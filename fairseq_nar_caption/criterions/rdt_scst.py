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
3. baseline ŷ: the greedy caption (argmax per slot) of the same pass (``--scst-baseline mean``:
   the mean reward of the image's other samples instead);
4. R = CIDEr-D against the image's human references with the training split's document
   frequencies, and the loss −1/N_y Σ_j (R_j − b_j)·log p_θ(y^{s_j}) summed over the batch's
   captions: the reward, the baselines and the loss are every SCST criterion's (``self_critical``).

Validation is the task's decode score, as for every model of the suite: ``--eval-cider`` (required)
decodes the validation split with the diffusion sampler (the task's ``--diffusion-steps``,
``--time-difference``) and logs its corpus CIDEr-D as ``cider``: ``--best-checkpoint-metric cider
--maximize-best-checkpoint-metric``.  The criterion itself adds nothing to a validation pass.

Step 1's draws and the encoder pass are stage 1's (``rdt_common``).
"""
from dataclasses import dataclass, field
import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum

from ..errors import OptionError
from .rdt_common import check_rdt_model, noised_inputs
from .self_critical import BASELINES, SelfCriticalConfig, SelfCriticalCriterion


@dataclass
class RDTSCSTConfig(SelfCriticalConfig):
    scst_baseline: ChoiceEnum(BASELINES) = field(
        default="greedy", metadata={"help": "greedy: R(ŷ) of the same pass's argmax caption (Eq. 14); mean: the mean "
                                            "reward of the image's other samples (with the teacher's caption)"})
    gt_as_input: bool = field(default=False, metadata={"help": "noise the ground-truth caption as x0 (default: the "
                                                               "AR teacher's, as the reference)"})
    no_teacher_sample: bool = field(default=False, metadata={"help": "do not add the teacher's caption to the "
                                                                     "samples (plain SCST)"})
    max_time: float = field(default=0.999, metadata={"help": "t' ~ U(0, max_time)"})


@register_criterion("rdt_scst", dataclass=RDTSCSTConfig)
class RDTSCSTCriterion(SelfCriticalCriterion):
    def __init__(self, task, num_samples, scst_baseline, reward_split, gt_as_input, no_teacher_sample, max_time):
        super().__init__(task, "rdt_scst", num_samples, scst_baseline, reward_split,
                         samples_added=0 if no_teacher_sample else 1)
        self.teacher_as_input, self.teacher_sample = not gt_as_input, not no_teacher_sample
        self.max_time = max_time

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
        if not model.training:
            return self.validation_output(x0.size(0), x0.device)
        _, x_t, gamma, encoder_out, cascade = noised_inputs(model, sample, x0, self.max_time)  # Eq. 1
        logits, _ = model.denoise(x_t, gamma, encoder_out, None, cascade)
        lprobs = F.log_softmax(logits.float(), dim=-1)  # B x L x W

        samples = [torch.distributions.Categorical(logits=lprobs).sample() for _ in range(self.k)]
        if self.teacher_sample and teacher is not None:
            samples.append(teacher)  # the AR teacher's caption among the samples (N_y = K + 1)
        logp = torch.stack([(lprobs.gather(-1, y.unsqueeze(-1)).squeeze(-1) * model.sentence_mask(y)).sum(1)
                            for y in samples])  # log p_θ(y), N_y x B
        # Eq. 14; the greedy baseline R(ŷ): the argmax caption of the same pass
        return self.self_critical_loss([r for y in samples for r in y], logp, ids, lambda: lprobs.argmax(-1))
