"""Load a checkpoint as fairseq-generate does and decode a dataset with it.

One decode loop for every consumer (benchmark harness, distillation, hub):
``load(data, generate_args)`` parses the same arguments as ``fairseq-generate``
(``--path``, ``--beam``, ``--generator`` …), sets up the task, loads the models
and builds the generator through ``task.build_generator``; ``decode_batch`` runs
``task.inference_step`` (encoder included) and returns caption strings.
"""
from dataclasses import dataclass
import ast
import os
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from fairseq import checkpoint_utils, options, tasks, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from .errors import OptionError
from .generators.base import extra_models

USER_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Loaded:
    task: object
    models: list
    generator: object
    cfg: object
    device: torch.device
    fp16: bool = False


def _option_error(message: str):
    raise OptionError(f"fairseq-generate arguments: {message}")


def parse_generate_args(data: str, args: Sequence[str]):
    """``fairseq-generate DATA --user-dir <this package> --task captioning ARGS`` as a cfg
    (ARGS may name another ``--task`` of this package)."""
    task = [] if "--task" in args else ["--task", "captioning"]
    argv = [data, "--user-dir", USER_DIR] + task + list(args)
    parser = options.get_generation_parser()
    parser.error = _option_error  # fairseq's usage block and exit 2 → one OptionError naming the option
    with warnings.catch_warnings():  # fairseq's hydra compose API: deprecation chatter only
        warnings.simplefilter("ignore", UserWarning)
        return convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, input_args=argv))


def load(data: str, args: Sequence[str], device: str = "cpu", fp16: bool = False) -> Loaded:
    """``fp16`` (CUDA only): models and float inputs in half precision."""
    if fp16 and device == "cpu":
        raise OptionError("--fp16 needs --device cuda")
    cfg = parse_generate_args(data, args)
    utils.import_user_module(cfg.common)
    task = tasks.setup_task(cfg.task)
    overrides = ast.literal_eval(cfg.common_eval.model_overrides)
    models, _ = checkpoint_utils.load_model_ensemble(
        utils.split_paths(cfg.common_eval.path), arg_overrides=overrides, task=task)
    dev = torch.device(device)
    for m in models:
        m.eval().to(dev)
        if fp16:
            m.half()
        m.prepare_for_inference_(cfg)
    generator = task.build_generator(models, cfg.generation)
    for v in extra_models(generator):  # models a generator loaded itself (a NACF teacher)
        if not any(v is m for m in models):
            v.eval().to(dev)
            if fp16:
                v.half()
    return Loaded(task, models, generator, cfg, dev, fp16)


def batches(dataset, batch_size: int, max_items: Optional[int] = None) -> Iterator[dict]:
    """Collated samples in dataset order (sample ids = dataset indices)."""
    n = len(dataset) if not max_items else min(max_items, len(dataset))
    for start in range(0, n, batch_size):
        yield dataset.collater([dataset[i] for i in range(start, min(n, start + batch_size))])


def to_device(sample: dict, device: torch.device, fp16: bool = False) -> dict:
    if device.type != "cpu":
        sample = utils.move_to_cuda(sample, device=device)
    if fp16:
        sample = utils.apply_to_sample(lambda t: t.half() if t.is_floating_point() else t, sample)
    return sample


def decode_batch(loaded: Loaded, sample: dict) -> List[str]:
    """Best hypothesis per sample, as a caption string (specials stripped)."""
    return loaded.task.caption_strings(loaded.generator, loaded.models, sample)


def decode_dataset(loaded: Loaded, dataset, batch_size: int = 64, max_items: Optional[int] = None,
                   progress: Optional[Callable[[int], object]] = None) -> Dict[str, str]:
    """item id → caption for a per-item dataset; ``progress(n)`` after each batch of n items."""
    out = {}
    for sample in batches(dataset, batch_size, max_items):
        for item_id, cap in zip(sample["item_ids"], decode_batch(loaded, to_device(sample, loaded.device, loaded.fp16))):
            out[item_id] = cap
        if progress is not None:
            progress(len(sample["item_ids"]))
    return out
