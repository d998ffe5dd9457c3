"""DAG decoding (``--generator dag``): one pass of the graph decoder (``models/dag.py``), then a path
from the first vertex to the last, each vertex on it emitting a token.  ``--dag-decode``:

- ``greedy``: at each vertex its most probable token, then the most probable transition
  (DA-Transformer, Huang et al. 2022, greedy decoding);
- ``lookahead``: the next vertex maximises transition × the best token probability there,
  log E[i, j] + max_y log P(y | v_j) (DA-Transformer's lookahead);
- ``viterbi``: the path maximising (Σ log E + Σ max_y log P(y | v)) / K^α over its K vertices,
  α = ``--dag-length-alpha`` (Shao et al. 2022, Viterbi decoding of directed acyclic Transformers;
  ``models/dag.dag_best_path``), tokens the vertices' most probable ones;
- ``beam``: a beam of ``--dag-beam`` B captions over (vertex, words so far), each step extending
  by the B most probable transitions × the B most probable tokens there, paths that give the same
  words at the same vertex merged (their probabilities added), finished captions ranked by
  log P / K^α; no language model.  It costs up to L steps of B³ candidates on the host, against one
  path walk for the other modes.

Every search keeps to what the graph is trained on (words + </s>, ``criterions/dag_loss.py``):
a path ends at the last vertex, which emits </s>, and no other vertex emits </s>, so a caption has
at least one word.  The vocabulary rule applies: the banned symbols never win a vertex.  Scores:
the path's log-probability (transitions + tokens); positional scores are the tokens' log-probabilities.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from fairseq.dataclass import FairseqDataclass
from torch import Tensor

from ..errors import GeneratorError
from ..models.dag import dag_best_path
from .base import CaptionGenerator
from .registry import register_generator

DECODES = ("greedy", "lookahead", "viterbi", "beam")


@dataclass
class DAGOptions(FairseqDataclass):
    """DAG captioning (generators/dag.py): dag."""
    dag_decode: str = field(default="lookahead", metadata={"help": "greedy | lookahead | viterbi | beam (module "
                                                                   "docstring; beam costs up to L steps of B^3 "
                                                                   "candidates on the host)"})
    dag_length_alpha: float = field(default=1.0, metadata={"help": "α of viterbi / beam: paths ranked by "
                                                                   "log P / K^α over their K vertices"})
    dag_beam: int = field(default=4, metadata={"help": "B of --dag-decode beam"})

    def validate(self):
        if self.dag_decode not in DECODES:
            raise GeneratorError(f"--dag-decode must be one of {', '.join(DECODES)}, got {self.dag_decode!r}")
        if not 0 <= self.dag_length_alpha <= 2:
            raise GeneratorError(f"--dag-length-alpha must be in [0, 2], got {self.dag_length_alpha}")
        if self.dag_beam < 1:
            raise GeneratorError(f"--dag-beam must be >= 1, got {self.dag_beam}")


class DAGGenerator(CaptionGenerator):
    """The graph decoder's pass, then one of the path searches of the module docstring."""

    def __init__(self, models, dictionary, options: DAGOptions, args=None, context=None, **frame):
        super().__init__(models, dictionary, options, args, context, **frame)  # allow_unk, dedup
        self.mode, self.alpha, self.beam = options.dag_decode, options.dag_length_alpha, options.dag_beam
        # what a vertex before the last never emits: the banned symbols and </s> (module docstring)
        self.never = torch.tensor(sorted(set(self.banned) | {self.eos}), dtype=torch.long)

    def decode(self, sample, encoder_out) -> List[List[Dict[str, Tensor]]]:
        token_lp, link_lp = self.model.forward_graph(encoder_out)  # one decoder pass
        token_lp = token_lp.float()
        eos = token_lp[:, -1, self.eos].clone()
        token_lp[:, :-1, self.never.to(token_lp.device)] = -math.inf
        token_lp[:, -1] = -math.inf  # the last vertex emits </s> only
        token_lp[:, -1, self.eos] = eos
        token_lp, link_lp = token_lp.cpu(), link_lp.float().cpu()  # the path search runs on the host
        out = []
        for tok, link in zip(token_lp, link_lp):
            if self.mode == "beam":
                out.append([self._hypo(words, scores, total) for words, scores, total in self.beam_search(tok, link)])
                continue
            best, arg = tok.max(-1)
            if self.mode == "viterbi":
                path, _ = dag_best_path(best, link, self.alpha)
            else:
                path = self.walk(best, link)
            out.append([self._hypo(*self.emit(path, best, arg, link))])
        return out

    def walk(self, best: Tensor, link: Tensor) -> List[int]:
        """greedy / lookahead: from the first vertex, one transition at a time, until the last vertex."""
        n = best.size(0)
        step = link + best.unsqueeze(0) if self.mode == "lookahead" else link
        nxt = step.argmax(-1).tolist()
        path, v = [0], 0
        while v != n - 1:
            v = nxt[v]
            path.append(v)
        return path

    def emit(self, path: List[int], best: Tensor, arg: Tensor, link: Tensor) -> Tuple[List[int], List[float], float]:
        """(words, their log-probabilities, the path's log-probability) of a path: the vertices'
        tokens, the last vertex's </s> not among the words."""
        words, scores, total = [], [], 0.0
        for k, v in enumerate(path):
            total += float(best[v]) + (float(link[path[k - 1], v]) if k else 0.0)
            token = int(arg[v])
            if token == self.eos:
                break
            words.append(token)
            scores.append(float(best[v]))
        return words, scores, total

    def beam_search(self, tok: Tensor, link: Tensor) -> List[Tuple[List[int], List[float], float]]:
        """``--dag-beam`` B (module docstring): hypotheses (vertex, words) → (log P, word scores)."""
        n, b = tok.size(0), self.beam
        top_tok_lp, top_tok = tok.topk(min(b, tok.size(1)), dim=-1)  # L x B
        top_link_lp, top_next = link.topk(min(b, n - 1), dim=-1)  # L x B
        live: Dict[Tuple[int, Tuple[int, ...]], Tuple[float, List[float]]] = {}
        done: Dict[Tuple[int, ...], Tuple[float, List[float]]] = {}

        def add(pool, key, lp, scores):
            if key in pool:  # the same words by another path: the probabilities add
                old, old_scores = pool[key]
                pool[key] = (float(torch.logaddexp(torch.tensor(old), torch.tensor(lp))), old_scores)
            else:
                pool[key] = (lp, scores)

        def place(v, words, lp, scores):
            for t_lp, t in zip(top_tok_lp[v].tolist(), top_tok[v].tolist()):
                if t_lp == -math.inf:
                    continue
                if v == n - 1:  # a finished caption: the last vertex emits </s> only
                    add(done, words, lp + t_lp, scores)
                else:
                    add(live, (v, words + (t,)), lp + t_lp, scores + [t_lp])

        place(0, (), 0.0, [])
        while live:
            ranked = sorted(live.items(), key=lambda kv: -kv[1][0])[:b]
            live = {}
            for (v, words), (lp, scores) in ranked:
                for l_lp, j in zip(top_link_lp[v].tolist(), top_next[v].tolist()):
                    if l_lp > -math.inf:
                        place(j, words, lp + l_lp, scores)
        if not done:
            return [([], [], -math.inf)]
        norm = sorted(done.items(), key=lambda kv: -kv[1][0] / max(len(kv[0]) + 1, 1) ** self.alpha)
        return [(list(words), scores, lp) for words, (lp, scores) in norm[:b]]

    def _hypo(self, words: List[int], scores: List[float], total: float) -> Dict[str, Tensor]:
        return self.hypothesis(words, scores, total)


register_generator("dag", options=DAGOptions, models=("dag_caption",),
                   help="DAG: one pass of the graph decoder, then a path through it (--dag-decode)")(DAGGenerator)
