from __future__ import annotations

import pytest
from k8s_support import SCENARIOS


@pytest.fixture(params=sorted(SCENARIOS))
def scenario(request) -> str:
    """Each values set the chart must render: default, gpu, keda-off, local, external."""
    return request.param
