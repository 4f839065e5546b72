"""pytest fixtures for the fakes (import them into a test module: `from tests.fakes.fixtures import *`)."""

import pytest

from tests.fakes.app_status import AppStatusFake
from tests.fakes.inhouse import InHouseFake, ShapedFlagFake
from tests.fakes.launchdarkly import LaunchDarklyFake
from tests.fakes.optimizely import OptimizelyFake
from tests.fakes.tls import make_tls

CANARY = "CANARY-ff-key-7f3a9c1e5b"  # a recognisable secret: it must never show up in any output


@pytest.fixture
def ld_fake():
    fake = LaunchDarklyFake(api_key=CANARY)
    fake.add_flag("DataTransformationFeature", environments={"production": True, "test": True})
    with fake:
        yield fake


@pytest.fixture
def opt_fake():
    fake = OptimizelyFake(token=CANARY)
    fake.add_flag("data_transformation_feature", environments={"production": True, "development": True})
    with fake:
        yield fake


@pytest.fixture
def inhouse_fake():
    fake = InHouseFake(api_key=CANARY, flags={"DataTransformationFeature": True})
    with fake:
        yield fake


@pytest.fixture
def shaped_fake():
    fake = ShapedFlagFake(api_key=CANARY, toggles={("prod", "DataTransformationFeature"): True})
    with fake:
        yield fake


@pytest.fixture
def status_fake():
    with AppStatusFake() as fake:
        yield fake


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("tls"))
