"""Which route protocol numbers an instance may own (``core.protocols``): the numbers and
texts users see when they configure one."""

from __future__ import annotations

import pytest

from xcluster_cni_lib.core.errors import InputError
from xcluster_cni_lib.core.protocols import (
    DEFAULT_PROTOCOL,
    FIRST_OWNABLE,
    KERNEL_PROTOCOLS,
    check_protocol,
)


def test_the_documented_numbers() -> None:
    assert DEFAULT_PROTOCOL == 202
    assert FIRST_OWNABLE == 5
    assert KERNEL_PROTOCOLS == {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static"}


@pytest.mark.parametrize("number", [5, 17, 202, 255])
def test_ownable_numbers_are_returned(number: int) -> None:
    assert check_protocol(number) == number


@pytest.mark.parametrize(
    ("number", "name"), [(0, "unspec"), (1, "redirect"), (2, "kernel"), (3, "boot"), (4, "static")]
)
def test_the_kernels_own_numbers_are_refused_by_name(number: int, name: str) -> None:
    with pytest.raises(InputError) as info:
        check_protocol(number)
    assert str(info.value) == (
        f"route protocol {number} is the kernel's own protocol {name!r}; "
        "use a number between 5 and 255 (default 202)"
    )


@pytest.mark.parametrize("number", [-1, 256, 1000])
def test_out_of_range_numbers_are_refused(number: int) -> None:
    with pytest.raises(ValueError) as info:  # an InputError is a ValueError
        check_protocol(number)
    assert str(info.value) == f"route protocol must be between 5 and 255, got {number}"
