"""Build the bundled VADER sentence data set (kd_edge/data/vader/) from the vaderSentiment sdist.

The human-rated sentences of Hutto & Gilbert (ICWSM 2014) ship only in the source distribution:

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2
    python scripts/prepare_vader.py vaderSentiment-3.3.2.tar.gz

Each line of the output (gzip JSON lines) is one sentence:
``{"id": "movie-1", "source": "movie", "rating": 2.27, "label": 1, "text": "..."}``.
``label`` is the sign of the mean human rating (1 positive, 0 negative), or null when
|rating| < 0.5 (too neutral to call). Sentences are kept in file order; splits are made by the recipe.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import tarfile
from pathlib import Path

SOURCES = {
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
}
NEUTRAL_BAND = 0.5
OUT = Path(__file__).resolve().parent.parent / "kd_edge" / "data" / "vader"


def _inner_tar(sdist: Path) -> tarfile.TarFile:
    outer = tarfile.open(sdist)
    member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
    return tarfile.open(fileobj=io.BytesIO(outer.extractfile(member).read()))


def main(sdist: str) -> None:
    inner = _inner_tar(Path(sdist))
    names = {Path(m.name).name: m for m in inner.getmembers()}
    rows = []
    for source, filename in SOURCES.items():
        text = inner.extractfile(names[filename]).read().decode("utf-8")
        for line in text.splitlines():
            if not line.strip():
                continue
            sid, rating, sentence = line.split("\t", 2)
            r = float(rating)
            label = None if abs(r) < NEUTRAL_BAND else int(r > 0)
            rows.append({"id": f"{source}-{sid}", "source": source, "rating": round(r, 4),
                         "label": label, "text": sentence.strip()})
    OUT.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(OUT / "sentences.jsonl.gz", "wb", mtime=0) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    print(f"wrote {len(rows)} sentences to {OUT / 'sentences.jsonl.gz'}")


if __name__ == "__main__":
    main(sys.argv[1])
