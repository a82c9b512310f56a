"""Write notebooks/07_head_importance.ipynb (stored without outputs; the test suite executes it)."""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# 07 · Which heads matter: ablation, gradient importance and pruning curves\n\n"
        "Attention maps show where a head looks, not whether the model needs it. Here we remove heads (exactly, "
        "inside the capture path: transformers 5 has no `head_mask` any more) and measure what the model loses. "
        "Everything runs offline on the embedded all-MiniLM-L6-v2 (6 layers x 12 heads), a sentence encoder: "
        "its objective is `1 - cos` between the pooled embedding with and without the head."
    ),
    nbf.v4.new_code_cell(
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nimport torch\n"
        "from hf_attn_inspect import AttentionInspector\n"
        "from hf_attn_inspect.capture.ablation import ablate\n"
        "from hf_attn_inspect.runs.importance import ablation_effect, head_importance, pruning_curve\n"
        "from hf_attn_inspect.runs.sources import sample_sentences\n"
        "from hf_attn_inspect.stats.patterns import head_table\n"
        "from hf_attn_inspect.views.importance import plot_importance_map, plot_pruning_curve, importance_report_text\n\n"
        "inspector = AttentionInspector.from_pretrained(device='cpu')\n"
        "texts = sample_sentences(8)\nlen(texts)"
    ),
    nbf.v4.new_markdown_cell(
        "## Ablating heads by hand\n\n"
        "`ablate(inspector, heads)` zeroes the chosen heads' outputs (before the output projection) in every forward "
        "pass inside the block; `how='mean'` puts each head's mean output over reference texts instead. The model "
        "itself is never changed."
    ),
    nbf.v4.new_code_cell(
        "batch = inspector.encode(texts[:4])\n"
        "def pooled(out):\n"
        "    m = batch.inputs['attention_mask'][..., None].float()\n"
        "    return (out.last_hidden_state * m).sum(1) / m.sum(1)\n"
        "with torch.no_grad():\n"
        "    intact = pooled(inspector.model(**batch.inputs))\n"
        "    with ablate(inspector, '5.9,5.10'):\n"
        "        without = pooled(inspector.model(**batch.inputs))\n"
        "    with ablate(inspector, '5.9,5.10', how='mean', reference=texts):\n"
        "        mean_ablated = pooled(inspector.model(**batch.inputs))\n"
        "cos = torch.nn.functional.cosine_similarity\n"
        "print('1 - cos, zero ablation:', (1 - cos(intact, without)).numpy().round(4))\n"
        "print('1 - cos, mean ablation:', (1 - cos(intact, mean_ablated)).numpy().round(4))"
    ),
    nbf.v4.new_markdown_cell(
        "## Importance of every head\n\n"
        "Ablation importance removes each head in turn (the layers below it are replayed from a cache, so all 72 "
        "heads cost about 0.6 of a forward pass each); gradient importance (Michel et al. 2019) needs one forward "
        "and one backward pass per batch. Both come with a standard error over sentences and each head's pattern class."
    ),
    nbf.v4.new_code_cell(
        "imp = head_importance(inspector, texts, method='ablation')\n"
        "grad = head_importance(inspector, texts, method='gradient')\n"
        "print('rank correlation ablation vs gradient:', round(imp['importance'].corr(grad['importance'], method='spearman'), 2))\n"
        "imp.sort_values('rank').head(8)"
    ),
    nbf.v4.new_code_cell(
        "fig, axes = plt.subplots(1, 2, figsize=(20, 5.5))\n"
        "plot_importance_map(imp, axes[0])\nplot_importance_map(grad, axes[1])\nfig.tight_layout()\nfig"
    ),
    nbf.v4.new_markdown_cell(
        "## Pruning curve\n\nRemove heads from least to most important, 25 % at a time, and measure the objective "
        "(Michel et al.'s pruning figures). `ablation_effect` measures any chosen set of heads removed together."
    ),
    nbf.v4.new_code_cell(
        "curve = pruning_curve(inspector, texts, imp, step=0.25)\n"
        "ax = plot_pruning_curve(curve)\n"
        "print(ablation_effect(inspector, texts, '5.9,5.10'))\n"
        "curve[['heads_removed', 'fraction', 'objective', 'stderr']]"
    ),
    nbf.v4.new_markdown_cell(
        "## Importance next to the pattern metrics\n\n"
        "`head_table(result, importance=imp)` joins the importance to every head's metrics and pattern class; "
        "`result.to_html(...)`'s explorer takes it too (`explorer_html(result, importance=imp)`: an `importance` "
        "entry in the metrics view). From a shell: `hf-attn-inspect importance --limit 64 --out importance/`."
    ),
    nbf.v4.new_code_cell(
        "table = head_table(inspector(texts[2]), importance=imp)\n"
        "table.sort_values('importance_rank')[['layer', 'head', 'pattern', 'entropy', 'previous_token', 'importance', 'importance_rank']].head(6)"
    ),
    nbf.v4.new_code_cell("print(importance_report_text(imp, curve, top=5))"),
]

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
out = Path(__file__).resolve().parents[1] / "notebooks" / "07_head_importance.ipynb"
nbf.write(nb, out)
print(f"wrote {out}")
