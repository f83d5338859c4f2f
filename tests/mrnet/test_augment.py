"""Augmentation draws one rotation/shift/flip per exam and applies it to every slice alike."""

import torch

from medflow.mrnet.augment import ExamAugmentation


def _structure(size=64):
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(size, size)
    img[10:30, 20:50] = 1.0
    img[40:55, 5:15] = 0.5
    return img + 0.1 * torch.rand(size, size, generator=g)


def test_slices_stay_aligned():
    base = _structure()
    # Slice k is slice 0 times (k+1): resampling is linear, so aligned slices keep that ratio exactly.
    exam = torch.stack([base * (k + 1) for k in range(6)]) * 40
    aug = ExamAugmentation(25, 25, 0.5)
    changed = 0
    for seed in range(8):
        torch.manual_seed(seed)
        out = aug(exam)
        assert out.shape == exam.shape and out.dtype == exam.dtype
        for k in range(6):
            torch.testing.assert_close(out[k], out[0] * (k + 1), rtol=1e-4, atol=1e-3)
        changed += not torch.allclose(out, exam)
    assert changed >= 7, "the augmentation does move the images"


def test_uint8_exams_and_flip():
    exam = (torch.stack([_structure()] * 3) * 200).to(torch.uint8)
    torch.manual_seed(0)
    out = ExamAugmentation(25, 25, 0.5)(exam)
    assert out.dtype == torch.uint8 and torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    flip = ExamAugmentation(0, 0, 1.0)(exam)
    assert torch.equal(flip, exam.flip(-1))
    still = ExamAugmentation(0, 0, 0.0)(exam)
    assert torch.equal(still, exam)


def test_rotation_and_shift_stay_within_range():
    """A single bright pixel at the centre moves at most shift_px (scaled to the image) under rotation+shift."""
    size = 64
    exam = torch.zeros(1, size, size)
    exam[0, 31:33, 31:33] = 1.0
    aug = ExamAugmentation(25, 25, 0.0)  # 25 px of 256 -> 6.25 px of 64
    for seed in range(20):
        torch.manual_seed(seed)
        out = aug(exam)[0]
        ys, xs = torch.nonzero(out > 0.2, as_tuple=True)
        assert len(ys) and (ys.float().mean() - 31.5).abs() <= 7.5 and (xs.float().mean() - 31.5).abs() <= 7.5


def test_from_params():
    from medflow.mrnet.augment import AugmentConfig

    assert ExamAugmentation.from_params(None) is None
    exam = (torch.stack([_structure()] * 2) * 200).to(torch.uint8)
    assert torch.equal(ExamAugmentation.from_params(AugmentConfig(0, 0, 1.0))(exam), exam.flip(-1))
