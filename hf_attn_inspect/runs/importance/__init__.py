"""Which heads matter: head ablation importance, gradient importance and pruning curves over a dataset.

:func:`head_importance` scores every attention head of a model on a dataset:

- ``method="ablation"``: the objective with the head removed (zeroed, or replaced by its mean output)
  minus the objective of the intact model, per sentence, averaged with equal sentence weight
  (``importance``), with its standard error (``stderr``);
- ``method="gradient"``: Michel et al. (2019): a gate ``xi_h = 1`` multiplies each head's output and the
  importance is ``E |dL/d xi_h|`` over sentences, from one forward and one backward pass per batch (the
  gates are per sentence, so one backward pass gives every sentence's gradient; no weight is updated).

The objective follows the model (:func:`default_objective`): causal LM -> next-token cross-entropy
(nats), masked LM -> MLM loss on a seeded 15 % masking, sequence classification with labels ->
cross-entropy (and accuracy), encoder-decoder LM -> the decoder's next-token cross-entropy, any other
model (e.g. a sentence encoder) -> ``1 - cos`` between the ablated and the intact pooled final hidden
states (pooled as the model's own sentence-transformers pooling, else the mean over real tokens). For
that last objective the intact model is its minimum, where the gradient vanishes, so its gradient
importance is the expected norm of ``d e/d xi_h`` for the unit-length embedding ``e``, estimated with one
random Gaussian direction per sentence (``sqrt(pi/2) |u . de/dxi|`` has that expectation). Users can pass
their own objective: a callable ``(model output, batch) -> [batch]`` losses.

Speed (``cache_layers=True``): one plain forward pass per batch records every layer's output; ablating a
head of layer ``l`` then replays the cached outputs of the layers below ``l`` (their ``forward`` is
replaced for the pass, no computation) and runs only from ``l`` up, in ``copies`` copies of the batch
with a different head removed in each copy. All heads cost about ``(L + 1) / 2L`` of a forward pass each.

Everything runs through :func:`~hf_attn_inspect.runs.sharded.run_sharded` (shards, resume, progress);
:func:`pruning_curve` removes heads in increasing order of importance and reports the objective at each
step (Michel et al.'s pruning figures); :func:`ablation_effect` measures a chosen set of heads removed
together. :func:`write_importance_tables` writes ``head_importance.csv`` and ``pruning_curve.csv``; the
figures and ``report.md`` are :mod:`hf_attn_inspect.views.importance`'s.
"""

from __future__ import annotations

from .ablation import ablation_effect
from .engine import IMPORTANCE_OPTIONAL, IMPORTANCE_OUTPUTS, METHODS, head_importance
from .objectives import Objective, ObjectiveFn, default_objective
from .pruning import pruning_curve
from .tables import write_importance_tables

__all__ = [
    "METHODS",
    "IMPORTANCE_OPTIONAL",
    "IMPORTANCE_OUTPUTS",
    "Objective",
    "default_objective",
    "head_importance",
    "ablation_effect",
    "pruning_curve",
    "write_importance_tables",
]

