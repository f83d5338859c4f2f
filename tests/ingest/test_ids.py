"""Ids that become file names cannot leave their folder."""

import pytest

from medflow.errors import InputError
from medflow.ingest.ids import check_id, id_problem


@pytest.mark.parametrize(
    "value", ["0003", "BraTS20_Validation_001", "c1ed0a2c-5b1e-4b2a-9f43-0d6e1a2b3c4d", "CNV-1016042-1", "a.b"]
)
def test_ids_of_the_real_data_sets_pass(value):
    assert check_id(value, "labels.csv") == value and id_problem(value) is None


@pytest.mark.parametrize("value", ["../../x", "..", ".hidden", "a/b", "a\\b", "", "x" * 129, "name with space", "é"])
def test_ids_that_could_name_a_path_elsewhere_are_refused_naming_the_source(value):
    with pytest.raises(InputError) as err:
        check_id(value, "stage_2_train_labels.csv line 3", what="patientId")
    assert str(err.value).startswith("stage_2_train_labels.csv line 3: patientId ")
    assert "cannot name an output file" in str(err.value)
