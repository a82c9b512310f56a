"""Write notebooks/02_patterns_and_debugging.ipynb (stored without outputs; the test suite executes it)."""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# Attention patterns and debugging\n\nName every head's pattern, find previous-token and induction "
        "heads with seeded random sequences, run the debugging checklist, and watch it catch five planted faults."
    ),
    nbf.v4.new_code_cell(
        "import torch\n"
        "from hf_attn_inspect import AttentionInspector\n"
        "from hf_attn_inspect.stats.patterns import head_table\n"
        "from hf_attn_inspect.stats.tables import format_head_table\n"
        "from hf_attn_inspect.runs.detectors import detect_heads\n"
        "from hf_attn_inspect.checks.chapter import debug_uniform_attention, debug_attention_collapse, debug_nan_attention\n"
        "from hf_attn_inspect.checks.faults import break_and_diagnose, caught_table\n"
        "inspector = AttentionInspector.from_pretrained(device='cpu')\n"
        "texts = ['The cat sat on the mat.', 'Attention decides which tokens matter, and why.', 'Hi!']\n"
        "results = inspector(texts)"
    ),
    nbf.v4.new_markdown_cell(
        "## Every head's metrics and class\n\nClasses follow the chapter's table (diagonal, column, previous, "
        "uniform, sparse) plus next, broad and mixed; a column head names the token that receives the attention. "
        "Thresholds are in `PatternThresholds` (Clark et al. 2019)."
    ),
    nbf.v4.new_code_cell(
        "table = head_table(results)\nprint(format_head_table(table[table.layer <= 1]))\ntable['class'].value_counts()"
    ),
    nbf.v4.new_markdown_cell(
        "## Detectors\n\nThe share of each query's attention on the pattern's keys, on 8 seeded sequences of 20 "
        "random tokens repeated twice (BOS/[CLS] first)."
    ),
    nbf.v4.new_code_cell(
        "for kind in ['previous_token', 'duplicate_token', 'induction']:\n"
        "    top = detect_heads(inspector, kind, num_sequences=8).nlargest(3, 'score')\n"
        "    print(kind, [(int(r.layer), int(r.head), round(float(r.score), 3)) for r in top.itertuples()])"
    ),
    nbf.v4.new_markdown_cell("## The chapter's three debug functions return findings (and print only when asked)"),
    nbf.v4.new_code_cell(
        "f = debug_uniform_attention(torch.ones(1, 5, 64) * 0.1, torch.ones(1, 5, 64) * 0.1, verbose=True)\n"
        "collapsed = torch.zeros(1, 5, 5); collapsed[:, :, 2] = 1.0\n"
        "debug_attention_collapse(collapsed, verbose=True)\n"
        "bad_mask = torch.tensor([[[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]]])\n"
        "nan = debug_nan_attention(torch.randn(1, 3, 8), torch.randn(1, 5, 8), torch.randn(1, 5, 8), bad_mask)\n"
        "nan.status, nan.numbers"
    ),
    nbf.v4.new_markdown_cell(
        "## The checklist on the real model, and five broken attentions\n\n`diagnose(inspector, texts)` runs "
        "every check on one padded batch. `break_and_diagnose` also plants five faults, each on a copy of the model "
        "(or in the capture path); each must fail its own check while the healthy model passes every check "
        "(`scripts/break_attention.py`)."
    ),
    nbf.v4.new_code_cell("reports = break_and_diagnose(inspector, texts)\nreports['healthy'].print()"),
    nbf.v4.new_code_cell("print(caught_table(reports))\nreports['scale_removed']['attention_scale'].print()"),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
out = Path(__file__).resolve().parents[1] / "notebooks" / "02_patterns_and_debugging.ipynb"
out.parent.mkdir(exist_ok=True)
nbf.write(nb, out)
print(f"wrote {out}")
