"""Device check for analysis/debug on CUDA: head_table, detectors, diagnose and the five faults on the GPU."""
import os, sys, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from hf_attn_inspect import AttentionInspector
from hf_attn_inspect.analysis import head_table, detect_heads, head_metrics
from hf_attn_inspect.faults import break_and_diagnose, caught_table, all_caught

dev = "cuda" if torch.cuda.is_available() else "cpu"
print("device", dev, torch.__version__, torch.cuda.get_device_name(0) if dev == "cuda" else "")
t = time.time()
ins = AttentionInspector.from_pretrained(device=dev)
cpu = AttentionInspector.from_pretrained(device="cpu")
texts = ["The cat sat on the mat.", "Hi!", "A longer sentence, with commas, for padding the batch nicely."]
a, b = head_table(ins(texts)), head_table(cpu(texts))
print("head_table max diff cuda vs cpu", float((a.select_dtypes("number") - b.select_dtypes("number")).abs().max().max()),
      "same classes", bool((a["class"] == b["class"]).all()))
d = detect_heads(ins, "previous_token")
print("previous_token top", d.nlargest(2, "score").values.tolist())
reports = break_and_diagnose(ins)
print(caught_table(reports))
print("all caught", all_caught(reports), "secs", round(time.time() - t, 1))
sys.exit(0 if all_caught(reports) else 1)
