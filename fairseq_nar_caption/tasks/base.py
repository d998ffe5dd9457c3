"""What the ``captioning`` and ``vision_language`` tasks share (one home for each rule):

- the dictionary gets the reserved symbols ``<mask> <vis> <blank>`` appended, so AR
  teachers and every NAR model share one index space;
- evaluation datasets are batched with ``required_batch_size_multiple`` 1 (fairseq(-fixed)'s
  ``batch_by_size`` would drop a last partial batch: fairseq-generate would silently
  skip up to 7 items);
- a model built afresh (not restored) may initialise itself from a pretrained one
  (``init_from_pretrained``: NACF/SAIC/NARVL from AR weights, NARVL from OFA);
- a CTC model's N output positions must hold every training target with the blanks
  CTC needs between repeats (refused at load time, naming the file and the row);
- ``build_generator``: ``--generator sequence`` is fairseq's beam search under the
  package's vocabulary rule; the other names come from ``generators/``; a model the
  generator cannot decode, or an option of another generator, is refused by name;
- ``--eval-cider`` (``EvalCiderConfig``): every validation also decodes the validation split
  with the task's ``--generator`` and its options (the row the benchmark reports) and logs its
  CIDEr-D as ``cider``, so ``--best-checkpoint-metric cider --maximize-best-checkpoint-metric``
  selects checkpoints by what is reported, not by a masked / noised loss.
"""
import json
from typing import List
from argparse import Namespace
from dataclasses import dataclass, field, fields

import torch
from fairseq import metrics
from fairseq.data import Dictionary
from fairseq.dataclass import FairseqDataclass
from fairseq.dataclass.configs import GenerationConfig
from fairseq.tasks import FairseqTask

from ..data.text import RESERVED_SYMBOLS, load_dictionary
from ..errors import DataError, OptionError
from ..generators import (GeneratorContext, GeneratorError, RuledSequenceGenerator, banned_symbols,
                          build_caption_generator, check_model_generator)
from ..generators.options import check_foreign_options, check_generation_options

def load_dictionary_with(path: str, extra_symbols=()) -> Dictionary:
    """``dict.txt`` + ``extra_symbols`` + the reserved symbols, in that order."""
    d = load_dictionary(path)
    for sym in list(extra_symbols) + list(RESERVED_SYMBOLS):
        d.add_symbol(sym)
    return d


def check_ranges(cfg, lower_bounds) -> None:
    """Each ``(option, low)``: the task option is at least ``low`` (checked when the task is set up,
    before any data is read); else one OptionError naming it."""
    for name, low in lower_bounds:
        value = getattr(cfg, name)
        if value is not None and value < low:
            raise OptionError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


@dataclass
class EvalCiderConfig(FairseqDataclass):
    eval_cider: bool = field(
        default=False, metadata={"help": "validation: decode the validation split with --generator and log its "
                                         "CIDEr-D as 'cider' (select with --best-checkpoint-metric cider "
                                         "--maximize-best-checkpoint-metric)"})
    eval_cider_args: str = field(
        default="{}", metadata={"help": "fairseq generation options of that decoding as JSON, e.g. "
                                        "'{\"beam\": 5, \"max_len_b\": 30}' (AR / outline-fill)"})


class CaptionTaskBase(FairseqTask):
    target_check = None  # the built model's check_targets hook, if it has one

    def is_evaluation_dataset(self, dataset) -> bool:
        raise NotImplementedError

    def training_targets(self, dataset):
        """(targets, where(i) → 'file: item/row') of a training dataset, for the CTC check."""
        raise NotImplementedError

    def get_batch_iterator(self, dataset, **kwargs):
        for name, flag in (("max_sentences", "--batch-size"), ("max_tokens", "--max-tokens")):
            if kwargs.get(name) is not None and kwargs[name] < 1:
                raise OptionError(f"{flag} must be >= 1, got {kwargs[name]}")
        if self.is_evaluation_dataset(dataset):
            kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, **kwargs)

    def check_fits(self, dataset) -> None:
        """A model that constrains its training targets (the hook ``check_targets(targets, where,
        eos)``: NARVL's N query positions) checks every target of a training split."""
        if self.target_check is not None:
            targets, where = self.training_targets(dataset)
            self.target_check(targets, where, self.target_dictionary.eos())

    def loaded_dataset(self, split, dataset):
        """Register a freshly loaded split (and check it against a CTC model already built)."""
        self.datasets[split] = dataset
        if split.startswith("train"):
            self.check_fits(dataset)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        # fairseq does not tell the model whether it is being restored: initialise from a
        # pretrained model only when building afresh.
        if not from_checkpoint and hasattr(model, "init_from_pretrained"):
            model.init_from_pretrained()
        self.target_check = getattr(model, "check_targets", None)
        for split, ds in self.datasets.items():
            if split.startswith("train"):
                self.check_fits(ds)
        return model

    # ------------------------------------------------------------------ validation by decoding
    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if getattr(self.cfg, "eval_cider", False):
            logging_output.update(self.decode_cider(sample, model))
        return loss, sample_size, logging_output

    def decode_cider(self, sample, model) -> dict:
        """Sum of per-item CIDEr-D of this batch's captions (``--eval-cider``); the document
        frequencies are the whole validation split's, so the sums over the batches give the
        split's corpus CIDEr-D (``evaluation.coco_metrics.CorpusCiderD``)."""
        from ..evaluation.coco_metrics import CorpusCiderD

        if "references" not in sample:
            raise DataError("--eval-cider needs a per-item validation split with references")
        key = id(model)
        if getattr(self, "_cider_generator", (None, None))[0] != key:
            self._cider_generator = (key, self.build_generator([model], self.eval_generation_args()))
        if not hasattr(self, "_cider_scorers"):
            self._cider_scorers = {}
        first = sample["item_ids"][0]
        split = next((name for name, ds in self.datasets.items() if self.is_evaluation_dataset(ds)
                      and first in self.loaded_references(name)), None)
        if split is None:
            raise DataError(f"--eval-cider: item {first} is in no loaded validation split")
        if split not in self._cider_scorers:
            self._cider_scorers[split] = CorpusCiderD(list(self.loaded_references(split).values()))
        hyps = self.caption_strings(self._cider_generator[1], [model], sample)
        scores = self._cider_scorers[split].scores(hyps, sample["references"])
        return {"_cider_sum": float(scores.sum()), "_cider_n": len(hyps)}

    def loaded_references(self, split: str) -> dict:
        """``split_references`` of the loaded ``split``, computed once per loaded dataset (every
        validation batch asks which split it belongs to)."""
        ds = self.datasets[split]
        cache = self.__dict__.setdefault("_references_by_split", {})
        if split not in cache or cache[split][0] is not ds:
            cache[split] = (ds, self.split_references(ds))
        return cache[split][1]

    def eval_generation_args(self, **overrides) -> Namespace:
        """fairseq's generation options for decoding during training: the defaults of fairseq's
        ``GenerationConfig``, then ``--eval-cider-args`` (JSON), then ``overrides`` (e.g. SCST's
        sampling: the samples are capped as the validation decode is)."""
        try:
            given = json.loads(self.cfg.eval_cider_args or "{}")
        except json.JSONDecodeError as e:
            raise DataError(f"--eval-cider-args is not JSON ({e}): {self.cfg.eval_cider_args}")
        args = {f.name: getattr(GenerationConfig(), f.name) for f in fields(GenerationConfig) if f.name != "_name"}
        unknown = sorted(set(given) - set(args))
        if unknown:
            raise DataError(f"--eval-cider-args: not fairseq generation options: {', '.join(unknown)}")
        args.update(given)
        args.update(overrides)
        return Namespace(**args)

    def caption_string(self, tokens, strip=None) -> str:
        """Caption tokens → the caption text scored against references: ``strip`` (default:
        </s>) and padding left out, then ``post_process_hypothesis`` when the task has one."""
        d = self.target_dictionary
        text = d.string(torch.as_tensor(tokens).int().cpu(), extra_symbols_to_ignore=set(strip or {d.eos()}) | {d.pad()})
        post = getattr(self, "post_process_hypothesis", None)
        return post(text) if post is not None else text

    @torch.no_grad()
    def caption_strings(self, generator, models, sample: dict) -> List[str]:
        """Best hypothesis per sample of ``generator`` (fairseq's ``inference_step``), as a caption
        string: specials stripped, then ``post_process_hypothesis`` when the task has one (e.g.
        sentencepiece detokenisation)."""
        hypos = self.inference_step(generator, models, sample)
        strip = getattr(generator, "symbols_to_strip_from_output", None)
        return [self.caption_string(h[0]["tokens"], strip) for h in hypos]

    def split_references(self, dataset) -> dict:
        """item id → reference captions of an evaluation dataset."""
        raise NotImplementedError

    def reward_references(self, split: str) -> dict:
        """item id → the reference captions of ``split``, the SCST reward's (criterions/self_critical.py).
        Items of one image may share one list object: the reward counts it once in CIDEr-D's document
        frequencies."""
        raise OptionError(f"self-critical training needs a split's reference captions by item; the "
                          f"{type(self).__name__} does not provide them (the captioning task does)")

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        n = sum(log.get("_cider_n", 0) for log in logging_outputs)
        if n:
            metrics.log_scalar("_cider_sum", sum(log.get("_cider_sum", 0.0) for log in logging_outputs))
            metrics.log_scalar("_cider_n", n)
            metrics.log_derived("cider", lambda meters: round(100 * meters["_cider_sum"].sum
                                                              / max(meters["_cider_n"].sum, 1), 2))

    # ------------------------------------------------------------------ decoding
    def generator_context(self) -> GeneratorContext:
        return GeneratorContext(load_model=self.load_extra_model)

    def load_extra_model(self, path: str):
        """A further checkpoint on this task's dictionary (e.g. NACF's AR teacher)."""
        from fairseq import checkpoint_utils

        models, _ = checkpoint_utils.load_model_ensemble([path], task=self)
        return models[0]

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        name = self.cfg.generator
        check_generation_options(args)
        if name != "sequence":
            return build_caption_generator(name, models, self.target_dictionary, self.cfg, args,
                                           self.generator_context())
        check_foreign_options(self.cfg, None, name)
        check_model_generator(name, models)
        for m in models:
            if not hasattr(m.decoder, "reorder_incremental_state"):
                raise GeneratorError(f"--generator sequence needs an autoregressive decoder; "
                                     f"{type(m).__name__} has none")
        kwargs = dict(extra_gen_cls_kwargs or {})
        kwargs["banned"] = banned_symbols(self.target_dictionary, getattr(self.cfg, "allow_unk", False))
        kwargs["dedup"] = getattr(self.cfg, "dedup", False)
        return super().build_generator(models, args, seq_gen_cls or RuledSequenceGenerator, kwargs,
                                       prefix_allowed_tokens_fn)

    @property
    def target_dictionary(self):
        return self.dictionary
