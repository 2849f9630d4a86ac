"""The zoo nets (tests/zoo/nets.py) registered as ``zoo_<name>`` with one ModelHelper each
(``--helper=tests.zoo.helpers:InceptionHelper``...), on the digits at 8x8 like the user
helper of ``tests/zoo/user_nets.py``. Imported only by the tests that need them, which restore
the net registry afterwards (``tests.conftest.imported_for_module``)."""
from __future__ import annotations

from nets.registry import net_spec, register_net
from tests.zoo.user_nets import UserHelper
from tests.zoo.nets import ZOO


class ZooHelper(UserHelper):
    """One zoo net (``net``) on the digits at 8x8."""

    net = ""

    @property
    def model_name(self) -> str:
        return f"zoo_{self.net}"

    def net_spec(self) -> dict:
        return net_spec(self.model_name, num_classes=10)


HELPERS = {}
for _name, _cls in ZOO.items():
    register_net(f"zoo_{_name}")(_cls)
    HELPERS[_name] = type(f"{_name.capitalize()}Helper", (ZooHelper,), {"net": _name})
    globals()[HELPERS[_name].__name__] = HELPERS[_name]
