from tests.integration.conftest import clean_fake, fake, gateway

__all__ = ["clean_fake", "fake", "gateway"]
