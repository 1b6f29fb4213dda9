"""Carrier choice by rules: remote regions, urgency, rate table, store preference."""

from pathlib import Path

import pytest

from gateway.carrier_choice import (
    CarrierChooser,
    ChoiceRequest,
    NoCarrierError,
    Urgency,
    default_services,
    price,
    province_key,
)
from gateway.config import (
    AddressSettings,
    CarrierChoiceRules,
    CarrierService,
    GatewayConfig,
    KdniaoSettings,
    RateZone,
    SfExpressSettings,
    StoreSettings,
    StripeSettings,
)

EAST = ["上海", "江苏", "浙江"]
SERVICES = [
    CarrierService(id="yto", carrier="kdniao", product="YTO", max_weight_kg=30, zones=[
        RateZone(provinces=EAST, first_kg=6, per_extra_kg=2, days=2),
        RateZone(first_kg=10, per_extra_kg=4, days=4)]),
    CarrierService(id="ems", carrier="kdniao", product="EMS",
                   zones=[RateZone(first_kg=18, per_extra_kg=6, days=5)]),
    CarrierService(id="post", carrier="kdniao", product="YZPY",
                   zones=[RateZone(first_kg=12, per_extra_kg=3, days=7)]),
    CarrierService(id="sf", carrier="sf", product="2", zones=[
        RateZone(provinces=EAST, first_kg=12, per_extra_kg=3, days=1),
        RateZone(first_kg=16, per_extra_kg=6, days=2)]),
]  # fmt: skip
RULES = CarrierChoiceRules(services=SERVICES, remote_services=["ems", "post"])


def choose(origin: str, weight: float = 3.0, **kwargs: object) -> str:
    chooser = CarrierChooser(RULES, SERVICES)
    return chooser.choose(ChoiceRequest(origin, "上海市", weight, **kwargs)).service  # type: ignore[arg-type]


def test_price_counts_started_kilograms() -> None:
    zone = RateZone(first_kg=6, per_extra_kg=2, days=2)
    assert [price(zone, w) for w in (0.2, 1.0, 1.01, 3.0, 3.5)] == [6, 6, 8, 10, 12]


def test_province_names_are_matched_without_their_suffix() -> None:
    names = [
        "新疆维吾尔自治区",
        "广西壮族自治区",
        "内蒙古自治区",
        "上海市",
        "黑龙江省",
        "香港特别行政区",
    ]
    assert [province_key(n) for n in names] == ["新疆", "广西", "内蒙古", "上海", "黑龙江", "香港"]


def test_cheapest_that_meets_the_deadline() -> None:
    assert choose("江苏省") == "yto"  # 10 CNY, 2 days
    assert choose("广东省") == "yto"  # 18 CNY, 4 days, within the standard 5 days


def test_urgency_rules_out_the_slow() -> None:
    assert choose("广东省", urgency=Urgency.URGENT) == "sf"  # yto takes 4 days
    assert choose("江苏省", urgency=Urgency.URGENT) == "yto"  # 2 days is in time
    assert choose("广东省", deadline_days=0) == "sf", "none in time: the fastest"


def test_remote_provinces_go_by_ems_or_china_post() -> None:
    assert choose("新疆维吾尔自治区") == "ems"  # post is cheaper but takes 7 days
    assert choose("西藏自治区", deadline_days=10) == "post"
    chooser = CarrierChooser(RULES, SERVICES)
    choice = chooser.choose(ChoiceRequest("上海市", "青海省", 3.0))
    assert choice.service == "ems", "a remote destination counts too"
    assert "青海 is remote" in choice.explain()


def test_store_preference_beats_price_but_not_the_deadline() -> None:
    assert choose("江苏省", prefer=("sf",)) == "sf"
    assert choose("广东省", prefer=("kdniao",)) == "yto"
    assert choose("广东省", prefer=("post", "sf")) == "sf", "post is too slow, next preference"
    assert choose("新疆", prefer=("sf",)) == "ems", "remote wins over preference"


def test_weight_limit_and_unserved() -> None:
    assert choose("江苏省", weight=40) == "sf"  # yto takes at most 30 kg
    rules = CarrierChoiceRules(services=SERVICES[:1])
    only_east = CarrierService(id="local", carrier="kdniao", product="YTO",
                               zones=[RateZone(provinces=EAST, first_kg=5, days=1)])  # fmt: skip
    with pytest.raises(NoCarrierError):
        CarrierChooser(rules, [only_east]).choose(ChoiceRequest("广东省", "上海市", 1))


def test_open_circuit_carriers_are_avoided_while_another_can_go() -> None:
    chooser = CarrierChooser(RULES, SERVICES)
    req = ChoiceRequest("江苏省", "上海市", 3.0)
    choice = chooser.choose(req, unavailable={"kdniao"})
    assert choice.service == "sf"
    assert "avoiding kdniao (circuit open)" in choice.explain()
    assert chooser.choose(req, unavailable={"kdniao", "sf"}).service == "yto"


def test_reasons_explain_the_choice() -> None:
    choice = CarrierChooser(RULES, SERVICES).choose(
        ChoiceRequest("广东省", "上海市", 3.0, prefer=("sf",))
    )
    assert choice.reasons == (
        "3 service(s) meet the 5-day deadline",
        "store prefers sf",
        "cheapest: sf 28.00 CNY, 2 day(s)",
    )
    assert (choice.carrier, choice.product) == ("sf", "2")


def _config(**extra: object) -> GatewayConfig:
    address = AddressSettings(name="a", phone="1", province="上海市", city="上海市",
                              district="d", street="s")  # fmt: skip
    base: dict[str, object] = {
        "database": "x.sqlite3",
        "merchants": [],
        "stores": [StoreSettings(id="store-1", name="s", address=address)],
        "warehouse": address,
        "kdniao": KdniaoSettings(base_url="u", ebusiness_id="e", app_key="k"),
        "sf_express": SfExpressSettings(base_url="u", partner_id="p", checkword="c"),
        "stripe": StripeSettings(base_url="u", api_key="k"),
    }
    return GatewayConfig.model_validate({**base, **extra})


def test_without_a_rate_table_each_carrier_is_one_flat_service() -> None:
    services = default_services(_config())
    assert [(s.id, s.product) for s in services] == [("kdniao", "YTO"), ("sf", "2")]
    chooser = CarrierChooser.from_config(_config())
    assert chooser.choose(ChoiceRequest("广东省", "上海市", 2, prefer=("sf",))).service == "sf"


@pytest.mark.parametrize(
    ("extra", "message"),
    [({"kdniao": None, "sf_express": None}, "at least one carrier"),
     ({"carrier_choice": {"services": [{"id": "x", "carrier": "dhl", "product": "1",
                                        "zones": [{"first_kg": 1, "days": 1}]}]}},
      "carrier dhl not configured"),
     ({"carrier_choice": {"remote_services": ["ems"]}}, "unknown service ems")],
)  # fmt: skip
def test_inconsistent_configuration_is_refused(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**extra)


def test_store_preference_must_name_something_known() -> None:
    address = AddressSettings(name="a", phone="1", province="上海市", city="上海市",
                              district="d", street="s")  # fmt: skip
    store = StoreSettings(id="store-1", name="s", address=address, prefer=["dhl"])
    with pytest.raises(ValueError, match="prefers unknown"):
        _config(stores=[store])


def test_the_example_configuration_loads_and_chooses() -> None:
    config = GatewayConfig.load(Path(__file__).parents[1] / "deploy" / "gateway.example.toml")
    assert config.carrier_names == ["kdniao", "sf"]
    chooser = CarrierChooser.from_config(config)
    assert chooser.choose(ChoiceRequest("上海市", "上海市", 8)).service == "kdniao-yto"
    assert chooser.choose(ChoiceRequest("甘肃省", "上海市", 8)).service == "kdniao-ems"
