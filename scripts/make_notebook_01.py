"""Write notebooks/01_inspect_a_sentence.ipynb (stored without outputs; the test suite executes it)."""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# Inspect one sentence\n\nLoad the embedded default model (all-MiniLM-L6-v2, a pretrained BERT with "
        "6 layers x 12 heads, offline), capture every layer's and head's attention exactly, and look at it."
    ),
    nbf.v4.new_code_cell(
        "import matplotlib\nmatplotlib.use('Agg')\nimport torch\n"
        "from hf_attn_inspect import AttentionInspector\n"
        "from hf_attn_inspect.views.plotting import plot_attention_heatmap, plot_multi_head_attention, plot_model_view\n"
        "from hf_attn_inspect.stats.chapter import analyze_attention_pattern, print_attention_analysis\n"
        "from hf_attn_inspect.stats.tables import head_metrics\n"
        "inspector = AttentionInspector.from_pretrained(device='cpu')\n"
        "result = inspector('The cat sat on the mat.')\nresult"
    ),
    nbf.v4.new_markdown_cell("Tokens label both axes; weights are `[layers, heads, query, key]` and every row sums to 1."),
    nbf.v4.new_code_cell(
        "print(result.tokens)\nprint(result.attentions.shape)\n"
        "assert torch.allclose(result.attentions.sum(-1), torch.ones(6, 12, 9), atol=1e-5)"
    ),
    nbf.v4.new_code_cell(
        "ax = plot_attention_heatmap(result.head(2, 11), result.tokens, result.tokens, title='layer 2, head 11')\nax.figure"
    ),
    nbf.v4.new_code_cell("fig = plot_multi_head_attention(result.layer(2), result.tokens, title='layer 2')\nfig"),
    nbf.v4.new_code_cell("fig = plot_model_view(result.attentions)\nfig"),
    nbf.v4.new_markdown_cell("The chapter's pattern analysis of one head, and the same numbers for every head at once."),
    nbf.v4.new_code_cell("print_attention_analysis(analyze_attention_pattern(result.head(2, 11)))"),
    nbf.v4.new_code_cell("head_metrics(result).sort_values('previous_token', ascending=False).head()"),
    nbf.v4.new_markdown_cell("Sentence pairs carry segment ids; a padded batch gives one result per sentence, padding removed."),
    nbf.v4.new_code_cell(
        "pair = inspector('The cat sat.', 'It was tired.')\nprint(list(zip(pair.tokens, pair.segment_ids)))\n"
        "batch = inspector(['Short.', 'A somewhat longer sentence for the batch.'])\n[r.seq_len for r in batch]"
    ),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
out = Path(__file__).resolve().parents[1] / "notebooks" / "01_inspect_a_sentence.ipynb"
out.parent.mkdir(exist_ok=True)
nbf.write(nb, out)
print(f"wrote {out}")
