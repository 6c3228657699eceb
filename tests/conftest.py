import torch

# The test tensors are tiny: intra-op threads only add synchronisation overhead (10-20x slower under load on the
# 2-core machines this suite targets). Tests that need several threads set them themselves.
torch.set_num_threads(1)
