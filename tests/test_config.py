import pytest

from bitsound.config import apply_overrides, parse_recipe
from bitsound.errors import ConfigError
from bitsound.recipes import list_recipes, load_recipe


def test_shipped_recipes_validate():
    names = [name for name, description in list_recipes() if not description.startswith("study:")]
    assert {"quickstart", "digits-cnn"} <= set(names)
    for name in names:
        assert load_recipe(name).name == name


def test_unknown_key_is_reported_with_its_path():
    with pytest.raises(ConfigError, match=r"train\.optimizer\.learning_rate: unknown key"):
        parse_recipe({"name": "x", "model": {"name": "cnn2d"},
                      "train": {"optimizer": {"learning_rate": 0.1}}})


def test_bad_value_quotes_value_and_path():
    with pytest.raises(ConfigError, match=r"train\.epochs.*got -3"):
        parse_recipe({"name": "x", "model": {"name": "cnn2d"}, "train": {"epochs": -3}})


def test_overrides_parse_yaml_values_and_create_sections():
    data = apply_overrides({"train": {"epochs": 3}}, ["train.epochs=7", "augment.gain_db=1.5",
                                                      "data.split.val_folds=[1, 2]"])
    assert data == {"train": {"epochs": 7}, "augment": {"gain_db": 1.5},
                    "data": {"split": {"val_folds": [1, 2]}}}


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["train.epochs"])


def test_override_cannot_descend_into_a_value():
    with pytest.raises(ConfigError, match="'epochs' is a value"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])


def test_load_recipe_applies_overrides_and_validates():
    recipe = load_recipe("quickstart", overrides=["train.epochs=2"])
    assert recipe.train.epochs == 2
    with pytest.raises(ConfigError, match="train.epochs"):
        load_recipe("quickstart", overrides=["train.epochs=zero"])


def test_unknown_recipe_lists_shipped_ones():
    with pytest.raises(ConfigError, match="quickstart"):
        load_recipe("no-such-recipe")


def test_folds_split_needs_val_folds():
    with pytest.raises(ConfigError, match="val_folds"):
        parse_recipe({"name": "x", "model": {"name": "cnn2d"},
                      "data": {"split": {"kind": "folds"}}})
