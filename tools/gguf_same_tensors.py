"""Print how many tensors two GGUFs share with identical type and bytes: 'N/M'."""
import sys

import numpy as np
from gguf import GGUFReader

a, b = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
tb = {t.name: t for t in b.tensors}
same = sum(1 for t in a.tensors if t.name in tb and t.tensor_type == tb[t.name].tensor_type
           and np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(tb[t.name].data).view(np.uint8)))
print(f"{same}/{len(a.tensors)}")
