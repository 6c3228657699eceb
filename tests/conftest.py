import pytest
import torch

# The test tensors are tiny: intra-op threads only add synchronisation overhead (10-20x slower under load on the
# 2-core machines this suite targets). Tests that need several threads set them themselves.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """A cache of judges and readers (GVD_CACHE) of the test module's own: trained once per module, apart from the
    user's cache and from other modules'."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GVD_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
