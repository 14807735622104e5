"""第 05 章的增量反分词逐步记录。Chapter 05's step-by-step trace of incremental detokenization.

    python docs/scripts/detok_trace.py > docs/scripts/detok_trace.txt

Uses the byte-level BPE tokenizer of minisgl.testing (512 tokens, trained on the spot), in which
"光" and "🚀" are split into byte tokens, so the offsets have something to wait for.
"""
from __future__ import annotations

import tempfile

from minisgl.detokenizer import IncrementalDetokenizer
from minisgl.testing import make_tokenizer


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tok = make_tokenizer(d)
    prompt, ids = tok.encode("床前"), tok.encode("明月光🚀")
    print(f"prompt ids {prompt} = {tok.decode(prompt)!r}; output ids {ids} = {tok.decode(ids)!r}")
    print(f"each output token alone: {[tok.decode([i]) for i in ids]}")
    print('stop_strs = ["光🚀"]\n')
    d = IncrementalDetokenizer(tok, prompt, stop_strs=["光🚀"])
    print(f"{'step':>4} {'token':>5}  {'surr,read before':>16} -> {'after':>6}  {'append() returns':<18} {'take(False)':<12} text")
    for step, t in enumerate(ids, 1):
        before = (d.surr_offset, d.read_offset)
        new = d.append([t])
        out = d.take(False)
        after = (d.surr_offset, d.read_offset)
        print(f"{step:>4} {t:>5}  {str(before):>16} -> {str(after):>6}  {new!r:<18} {out!r:<12} {d.text!r}")
    d.flush()
    print(f"\nfinish with FINISH_MATCHED_STR('光🚀'): take(True, '光🚀') = {d.take(True, '光🚀')!r}; "
          f"text = {d.text!r}")


if __name__ == "__main__":
    main()
