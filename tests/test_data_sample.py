"""make_sample / decode_image: RGB conversion of every mode, EXIF orientation, 1-channel, JPEG draft, bad samples."""
import io
import math

import numpy as np
import pytest
from PIL import Image

from deepvit.data.loader import create_transform
from deepvit.data.sample import (BAD_IMAGE, BAD_LABEL, MISSING_IMAGE, MISSING_LABEL, BadSample, decode_image,
                                 draft_size_for, make_sample)


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w=40, h=24):
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                           np.full((h, w, 1), 90, np.float32)], axis=2).astype(np.uint8)


def palette_with_transparency():
    img = Image.fromarray(gradient()).convert('P')
    img.info['transparency'] = 0
    return img


@pytest.mark.parametrize('make, fmt', [
    (lambda: Image.fromarray(gradient()).convert('L'), 'PNG'),
    (palette_with_transparency, 'PNG'),
    (lambda: Image.fromarray(gradient()).convert('RGBA'), 'PNG'),
    (lambda: Image.fromarray(gradient()).convert('CMYK'), 'JPEG'),
    (lambda: Image.fromarray((gradient()[..., 0].astype(np.uint16) * 257)), 'PNG'),   # 16-bit grayscale
    (lambda: Image.fromarray(gradient()), 'WEBP'),
    (lambda: Image.fromarray(gradient()), 'BMP'),
])
@pytest.mark.parametrize('mode', ['RGB', 'L'])
def test_every_mode_decodes_to_requested_mode(make, fmt, mode):
    img = make()
    out = decode_image(encode(img, fmt), fmt.lower(), mode)
    assert out.mode == mode and out.size == img.size
    arr = np.asarray(out, dtype=np.float32)
    assert arr.std() > 10          # the content survived (not a blank conversion)


def test_exif_orientation_is_applied():
    arr = gradient(40, 24)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6               # rotate 90° clockwise to display
    out = decode_image(encode(img, 'JPEG', exif=exif, quality=95), 'jpg')
    assert out.size == (24, 40)
    expected = np.asarray(img.transpose(Image.Transpose.ROTATE_270), dtype=np.float32)
    assert np.abs(np.asarray(out, dtype=np.float32) - expected).mean() < 4


def test_extension_that_lies_about_the_format_still_decodes():
    data = encode(Image.fromarray(gradient()), 'PNG')
    assert decode_image(data, 'jpg').size == (40, 24)


def test_make_sample_one_channel_and_label():
    tf = create_transform(16, train=False, in_chans=1)
    members = {'png': encode(Image.fromarray(gradient()).convert('L'), 'PNG'), 'cls': b'7', 'json': b'{}'}
    x, y = make_sample(members, tf, mode='L', num_classes=10)
    assert y == 7 and tuple(x.shape) == (1, 16, 16) and str(x.dtype) == 'torch.uint8'


@pytest.mark.parametrize('members, reason', [
    ({'jpg': b'not an image at all', 'cls': b'1'}, BAD_IMAGE),
    ({'cls': b'1', 'pth': b'\x80\x04payload'}, MISSING_IMAGE),
    ({'jpg': b'x'}, MISSING_LABEL),
    ({'jpg': b'x', 'cls': b'10'}, BAD_LABEL),
    ({'jpg': b'x', 'cls': b'-1'}, BAD_LABEL),
    ({'jpg': b'x', 'cls': b'dog'}, BAD_LABEL),
])
def test_bad_samples_raise_with_reason(members, reason):
    with pytest.raises(BadSample) as e:
        make_sample(members, lambda im: im, num_classes=10)
    assert e.value.reason == reason


def test_truncated_jpeg_is_a_bad_image():
    data = encode(Image.fromarray(gradient(200, 200)), 'JPEG')
    with pytest.raises(BadSample) as e:
        decode_image(data[: len(data) // 2], 'jpg')
    assert e.value.reason == BAD_IMAGE


def test_draft_keeps_resolution_the_crop_needs():
    big = Image.fromarray(gradient(64, 48)).resize((1600, 1200), Image.BICUBIC)
    data = encode(big, 'JPEG', quality=90)
    size = draft_size_for(64, train=False)           # eval: 64 / 0.875 → 74 px shorter side
    out = decode_image(data, 'jpg', draft_size=size)
    assert min(out.size) >= size and out.size[0] < 1600          # decoded at reduced scale, still large enough
    tf = create_transform(64, train=False)
    full, drafted = tf(decode_image(data, 'jpg')).float(), tf(out).float()
    assert (full - drafted).abs().mean() < 2.0       # same picture after the eval transform (uint8 levels)
    train_size = draft_size_for(64, train=True)
    assert train_size == math.ceil(64 / math.sqrt(0.08 * 0.75))
    assert min(decode_image(data, 'jpg', draft_size=train_size).size) >= train_size


@pytest.mark.parametrize('in_chans', [3, 1])
def test_randaugment_survives_zero_bit_posterize(in_chans):
    """timm's 'inc1' posterize asks for 0 bits at magnitude 10, which Pillow 13 rejects; ours gives a black image."""
    from timm.data.auto_augment import rand_augment_transform
    tf = create_transform(16, train=True, in_chans=in_chans, auto_augment='rand-m10-n1-inc1')
    ops = [op for op in tf.transforms[2].ops if op.name == 'PosterizeIncreasing']
    assert ops and ops[0].aug_fn.__name__ == 'posterize_0_bits_ok'
    ops[0].prob, ops[0].magnitude_std = 1.0, 0.0
    img = Image.fromarray(gradient()).convert('RGB' if in_chans == 3 else 'L')
    assert np.asarray(ops[0](img)).max() == 0
    timm_op = rand_augment_transform('rand-m10-n1-inc1', {}).ops
    timm_op = [op for op in timm_op if op.name == 'PosterizeIncreasing'][0]
    timm_op.prob = 1.0
    with pytest.raises(ValueError):     # the upstream behaviour this guards against (timm 1.0.31, Pillow 13)
        timm_op(img)
