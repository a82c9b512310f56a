"""Write notebooks/03_visual_explorer.ipynb (without outputs); run from the repository root."""

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# 03 · The visual explorer and publication figures\n\n"
        "One self-contained HTML file (head view, matrix view, model view, per-head metrics; no network), "
        "and four static figures for papers. Everything runs offline on the embedded all-MiniLM-L6-v2."
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "from hf_attn_inspect import AttentionInspector\n"
        "from hf_attn_inspect.stats.aggregate import attention_rollout, words\n"
        "from hf_attn_inspect.stats.tables import head_metrics\n"
        "from hf_attn_inspect.views.figures import plot_attention_diff, plot_head_metric_map, plot_head_view, plot_rollout\n\n"
        "inspector = AttentionInspector.from_pretrained(device='cpu')\n"
        "result = inspector('The tokenizer splits unbelievably long words.', 'Attention still finds them.')\n"
        "result"
    ),
    new_markdown_cell(
        "## The interactive explorer\n\n"
        "`result.show()` embeds the page inline (an `<iframe srcdoc>`, so it works in Jupyter, VS Code and Colab); "
        "`result.to_html('attention.html')` writes the same page to a file you can e-mail. "
        "From a shell: `hf-attn-inspect view \"some text\" --pair \"another\" -o attention.html`."
    ),
    new_code_cell("result.show(height=650)"),
    new_code_cell(
        "import os\n"
        "html = result.to_html('attention.html')\n"
        "print(f\"{os.path.getsize('attention.html') / 1e3:.0f} kB, {len(html)} characters, one file, no external resources\")"
    ),
    new_markdown_cell(
        "## Word level\n\n"
        "Sub-word pieces merge into words: the weights given to a word's pieces are summed (keys) and the rows of "
        "a word's pieces are averaged (queries), so rows still sum to 1. Special tokens stay their own units."
    ),
    new_code_cell(
        "w = words(result)\n"
        "print(result.seq_len, 'tokens ->', w.seq_len, 'words:', w.tokens)\n"
        "print('rows sum to 1:', bool(((w.attentions.sum(-1) - 1).abs() < 1e-5).all()))"
    ),
    new_markdown_cell("## Figures (axes-level: pass `ax=`, get the axes back; save as PNG, SVG or PDF)"),
    new_code_cell(
        "fig, axes = plt.subplots(1, 2, figsize=(13, 6))\n"
        "plot_head_view(result, layer=2, heads=[0, 4, 9], ax=axes[0])\n"
        "plot_rollout(result, level='word', ax=axes[1])\n"
        "fig.tight_layout()"
    ),
    new_code_cell(
        "metrics = head_metrics(result)\n"
        "classes = {(int(r.layer), int(r.head)): ('diagonal' if r.diagonal > 0.5 else '') for r in metrics.itertuples()}\n"
        "ax = plot_head_metric_map(metrics, 'entropy', classes=classes)\n"
        "ax.figure.savefig('entropy_map.pdf'); ax.figure.savefig('entropy_map.svg')"
    ),
    new_markdown_cell(
        "### Comparing two checkpoints\n\n"
        "A stand-in for a fine-tuned checkpoint: a copy of the model whose layer-2 query projection is perturbed. "
        "The difference map is centred at 0 with a symmetric scale."
    ),
    new_code_cell(
        "import copy, torch\n"
        "tuned = copy.deepcopy(inspector.model)\n"
        "torch.manual_seed(0)\n"
        "with torch.no_grad():\n"
        "    q = tuned.encoder.layer[2].attention.self.query.weight\n"
        "    q.add_(0.5 * q.std() * torch.randn_like(q))\n"
        "other = AttentionInspector(tuned, inspector.tokenizer, name='perturbed')(result.text, result.text_pair)\n"
        "ax = plot_attention_diff(result, other, layer=2, names=('original', 'perturbed'))\n"
        "ax.figure.savefig('diff.png', dpi=120)"
    ),
]
nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
nbformat.write(nb, "notebooks/03_visual_explorer.ipynb")
