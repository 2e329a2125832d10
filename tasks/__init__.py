"""t5lite's seqio task and mixture registrations; `import t5lite_tasks` registers them all.

One module per family: `pydocs` (the embedded corpus), `bert` (masked-LM and
classification tasks over it for encoder-only models), `c4` (TFDS catalog C4,
which the user prepares), `synthetic` (generated supervised tasks),
`text_files` (the user's own text, registered on request).
"""

import t5lite.data  # noqa: F401  (TensorFlow host-only and quiet, before any task module imports it)
from t5lite_tasks import bert  # noqa: F401
from t5lite_tasks import c4  # noqa: F401
from t5lite_tasks import pydocs  # noqa: F401
from t5lite_tasks import synthetic  # noqa: F401
from t5lite_tasks import text_files  # noqa: F401
