"""Tasks over C4 from the TFDS catalog (`c4/en:3.1.0`): c4_span_corruption, c4_ul2, ...

C4 is large and needs Apache Beam to build, so t5lite never prepares it: point
DATA_DIR (or $TFDS_DATA_DIR) at a directory where it is prepared. Without it,
reading these tasks raises an error that says how to prepare it. The vocabulary
is the default one (set $T5LITE_SPM_MODEL to use another, such as T5's public
SentencePiece model copied locally).
"""

from t5lite.data import registration, sources, vocab

SOURCE = sources.CatalogTfdsSource(
  "c4/en:3.1.0",
  prepare_hint=" (needs apache-beam and the C4 download; see the TFDS catalog page for c4)",
)

registration.register_pretraining_tasks("c4", SOURCE, vocab.default_vocabulary())
