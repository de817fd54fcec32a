"""blurring.image_io on real photos turned into bad and odd inputs: errors, modes, EXIF, alpha, formats."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, ImageOps

from blurring.image_io import BadImageError, DecodedImage, decode_image, encode_image, output_format
from tests.conftest import SAMPLES

LIMIT = 10**9
ORIENTATION, MAKE, MODEL, DATETIME = 0x0112, 0x010F, 0x0110, 0x0132
EXIF_IFD, DATETIME_ORIGINAL = 0x8769, 0x9003
PHOTO = SAMPLES / "crowd_0.jpg"  # 400x267, landscape: a rotation changes its shape


def _source() -> Image.Image:
    with Image.open(PHOTO) as image:
        return image.convert("RGB")


def _encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _bgr(image: Image.Image) -> np.ndarray:
    return np.array(image.convert("RGB"))[..., ::-1]


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _check_pixels(decoded: DecodedImage, width: int, height: int) -> None:
    assert decoded.pixels.shape == (height, width, 3)
    assert decoded.pixels.dtype == np.uint8
    assert (decoded.width, decoded.height) == (width, height)


def _tagged_exif(orientation: int | None) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    exif[MAKE] = "StreetCam"
    exif[MODEL] = "SC-1000"
    exif[DATETIME] = "2024:01:02 03:04:05"
    exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = "2023:05:06 07:08:09"
    return exif


# ---------------------------------------------------------------- bad inputs


def test_empty_input_is_refused():
    with pytest.raises(BadImageError, match=r"empty"):
        decode_image(b"", LIMIT)


def test_text_named_jpg_is_not_an_image(tmp_path: Path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is a shopping list, not a photo\n" * 20)
    with pytest.raises(BadImageError, match=r"not an image"):
        decode_image(path.read_bytes(), LIMIT)


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_truncated_image_cannot_be_decoded(format: str):
    data = PHOTO.read_bytes() if format == "JPEG" else _encode(_source(), "PNG")
    with pytest.raises(BadImageError, match=r"cannot decode") as info:
        decode_image(data[: len(data) // 2], LIMIT)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "reason"), [("text", "not an image"), ("truncated", "cannot decode"), ("empty", "empty")]
)
def test_bad_input_is_refused_the_same_after_ultralytics_is_imported(capsys, content: str, reason: str):
    """The CLI imports ultralytics, which patches PIL.Image.open, before it decodes anything."""
    from detection.runtime import prepare_ultralytics

    prepare_ultralytics()
    import ultralytics  # noqa: F401

    capsys.readouterr()  # ultralytics' first-import messages
    data = PHOTO.read_bytes()
    bad = {
        "text": b"GET / HTTP/1.1\r\nHost: example\r\n\r\n" * 10,
        "truncated": data[: len(data) // 2],
        "empty": b"",
    }[content]
    with pytest.raises(BadImageError, match=reason):
        decode_image(bad, LIMIT)
    assert capsys.readouterr().out == ""  # no attempt to fetch or install decoders


@pytest.mark.filterwarnings("ignore:(Corrupt EXIF|Truncated File Read):UserWarning")
@pytest.mark.parametrize("format", ["JPEG", "PNG", "WEBP", "TIFF", "BMP"])
def test_image_cut_anywhere_is_a_bad_image(format: str):
    """A half-uploaded file, cut in its header or in its pixel data, gives BadImageError, nothing else."""
    data = _encode(_source(), format, **({"exif": _tagged_exif(6)} if format != "BMP" else {}))
    for cut in (40, 100, 300, 1000, len(data) // 3, len(data) * 2 // 3, len(data) - 100):
        with pytest.raises(BadImageError, match=r"cannot decode|not an image"):
            decode_image(data[:cut], LIMIT)


def test_too_many_pixels_is_refused_with_sizes_in_the_message():
    data = PHOTO.read_bytes()
    with pytest.raises(BadImageError, match=r"too many pixels") as info:
        decode_image(data, 400 * 267 - 1)
    assert "400x267" in str(info.value)
    _check_pixels(decode_image(data, 400 * 267), 400, 267)  # the limit itself is allowed


def test_bad_image_error_is_a_value_error():
    assert issubclass(BadImageError, ValueError)


# ---------------------------------------------------------------- odd inputs decode to upright BGR


def test_plain_jpeg_decodes_to_bgr_of_the_right_size():
    decoded = decode_image(PHOTO.read_bytes(), LIMIT)
    _check_pixels(decoded, 400, 267)
    assert decoded.alpha is None and not decoded.greyscale
    # channel order is BGR: compare with Pillow's own RGB decode, flipped
    assert _mean_abs_diff(decoded.pixels, _bgr(_source())) < 0.5
    assert _mean_abs_diff(decoded.pixels, _bgr(_source())[..., ::-1]) > 5


def test_png_decodes_exactly():
    source = _source()
    decoded = decode_image(_encode(source, "PNG"), LIMIT)
    _check_pixels(decoded, *source.size)
    assert np.array_equal(decoded.pixels, _bgr(source))


def test_rgba_png_keeps_its_alpha():
    source = _source()
    alpha = Image.fromarray(np.array(source.convert("L"))[:, ::-1])  # a real, non-constant alpha
    rgba = source.copy()
    rgba.putalpha(alpha)
    decoded = decode_image(_encode(rgba, "PNG"), LIMIT)
    _check_pixels(decoded, *source.size)
    assert np.array_equal(decoded.pixels, _bgr(source))
    assert decoded.alpha is not None and np.array_equal(decoded.alpha, np.array(alpha))


def test_palette_png_with_transparency_keeps_it():
    source = _source().quantize(64)
    source.info["transparency"] = 0
    decoded = decode_image(_encode(source, "PNG", transparency=0), LIMIT)
    _check_pixels(decoded, *source.size)
    expected = np.where(np.array(source) == 0, 0, 255).astype(np.uint8)
    assert decoded.alpha is not None and np.array_equal(decoded.alpha, expected)


def test_sixteen_bit_greyscale_png_is_scaled_not_clipped():
    grey8 = np.array(_source().convert("L"))
    grey16 = Image.fromarray(grey8.astype(np.uint16) * 257)  # 0..255 -> 0..65535
    assert grey16.mode == "I;16"
    data = _encode(grey16, "PNG")
    assert _open(data).mode.startswith("I")  # really read back as 16-bit
    decoded = decode_image(data, LIMIT)
    _check_pixels(decoded, *grey16.size)
    assert decoded.greyscale
    assert abs(float(decoded.pixels.mean()) - float(grey8.mean())) < 1.0
    assert (decoded.pixels == 255).mean() < 0.05  # not saturated
    for channel in range(3):
        assert np.abs(decoded.pixels[..., channel].astype(int) - grey8).max() <= 1


def test_greyscale_jpeg_decodes_to_three_equal_channels():
    grey = _source().convert("L")
    decoded = decode_image(_encode(grey, "JPEG", quality=95), LIMIT)
    _check_pixels(decoded, *grey.size)
    assert decoded.greyscale
    assert np.array_equal(decoded.pixels[..., 0], decoded.pixels[..., 1])
    assert np.array_equal(decoded.pixels[..., 1], decoded.pixels[..., 2])
    assert _mean_abs_diff(decoded.pixels[..., 0], np.array(grey)) < 2


def test_cmyk_jpeg_decodes_to_the_right_colours():
    source = _source()
    data = _encode(source.convert("CMYK"), "JPEG", quality=95)
    assert _open(data).mode == "CMYK"
    decoded = decode_image(data, LIMIT)
    _check_pixels(decoded, *source.size)
    assert not decoded.greyscale
    assert _mean_abs_diff(decoded.pixels, _bgr(source)) < 3  # not inverted, not channel-swapped


@pytest.mark.parametrize(
    ("orientation", "stored"),
    [
        (6, Image.Transpose.ROTATE_90),
        (8, Image.Transpose.ROTATE_270),
        (3, Image.Transpose.ROTATE_180),
    ],
)
def test_exif_orientation_is_applied(orientation: int, stored: Image.Transpose):
    source = _source()
    sideways = source.transpose(stored)  # what a camera held sideways stores; EXIF says how to fix it
    data = _encode(sideways, "JPEG", quality=95, exif=_tagged_exif(orientation))
    decoded = decode_image(data, LIMIT)
    _check_pixels(decoded, *source.size)  # upright: 400 wide, 267 high again
    assert _mean_abs_diff(decoded.pixels, _bgr(source)) < 3
    # the kept EXIF now says upright, since the pixels are
    kept = Image.Exif()
    kept.load(decoded.exif)
    assert kept[ORIENTATION] == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_pixels_are_exactly_pillows_upright_pixels_for_every_orientation(orientation: int):
    """JPEG pixels come from simplejpeg and are turned upright by our table: the same as Pillow's
    decode and `exif_transpose`, for the four turns and the four mirrorings."""
    for mode in ("RGB", "L"):
        data = _encode(_source().convert(mode), "JPEG", quality=90, exif=_tagged_exif(orientation))
        expected = _bgr(ImageOps.exif_transpose(_open(data)))
        assert np.array_equal(decode_image(data, LIMIT).pixels, expected), (mode, orientation)


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.jpg")))
def test_real_photos_decode_to_exactly_pillows_pixels(name: str):
    data = (SAMPLES / name).read_bytes()
    assert np.array_equal(decode_image(data, LIMIT).pixels, _bgr(ImageOps.exif_transpose(_open(data))))


def test_too_many_pixels_counts_the_stored_size_of_a_rotated_photo():
    data = _encode(_source().transpose(Image.Transpose.ROTATE_90), "JPEG", exif=_tagged_exif(6))
    with pytest.raises(BadImageError, match=r"too many pixels"):
        decode_image(data, 1000)


# ---------------------------------------------------------------- encoding: metadata, alpha, channels


@pytest.mark.parametrize("format", ["JPEG", "PNG", "WEBP"])
def test_exif_tags_survive_encoding_and_can_be_stripped(format: str):
    data = _encode(_source().transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95, exif=_tagged_exif(8))
    decoded = decode_image(data, LIMIT)

    kept = _open(encode_image(decoded, decoded.pixels, format, keep_metadata=True)).getexif()
    assert kept[MAKE] == "StreetCam"
    assert kept[MODEL] == "SC-1000"
    assert kept[DATETIME] == "2024:01:02 03:04:05"
    assert kept.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] == "2023:05:06 07:08:09"
    assert kept[ORIENTATION] == 1  # a viewer must not rotate the upright pixels again

    stripped = _open(encode_image(decoded, decoded.pixels, format, keep_metadata=False))
    assert len(stripped.getexif()) == 0
    assert "exif" not in stripped.info


def test_written_upright_photo_shows_upright_in_a_viewer():
    source = _source()
    data = _encode(source.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=_tagged_exif(6))
    decoded = decode_image(data, LIMIT)
    written = decode_image(encode_image(decoded, decoded.pixels, "JPEG"), LIMIT)  # applies EXIF again
    _check_pixels(written, *source.size)
    assert _mean_abs_diff(written.pixels, _bgr(source)) < 4


def test_icc_profile_is_kept_and_can_be_stripped():
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    decoded = decode_image(_encode(_source(), "JPEG", quality=95, icc_profile=profile), LIMIT)
    assert decoded.icc_profile == profile
    assert _open(encode_image(decoded, decoded.pixels, "JPEG")).info.get("icc_profile") == profile
    assert "icc_profile" not in _open(encode_image(decoded, decoded.pixels, "JPEG", keep_metadata=False)).info


def test_photo_without_metadata_writes_none():
    decoded = decode_image(_encode(_source(), "PNG"), LIMIT)
    assert decoded.exif is None and decoded.icc_profile is None
    written = _open(encode_image(decoded, decoded.pixels, "PNG"))
    assert len(written.getexif()) == 0


def test_alpha_survives_a_png_round_trip():
    source = _source()
    alpha = Image.fromarray(np.array(source.convert("L"))[::-1])
    rgba = source.copy()
    rgba.putalpha(alpha)
    decoded = decode_image(_encode(rgba, "PNG"), LIMIT)
    changed = decoded.pixels.copy()
    changed[:50, :50] = 0  # the blurred pixels are written, the alpha of the source kept
    written = _open(encode_image(decoded, changed, "PNG"))
    assert written.mode == "RGBA"
    assert written.size == source.size
    assert np.array_equal(np.array(written.getchannel("A")), np.array(alpha))
    assert np.array_equal(np.array(written.convert("RGB"))[..., ::-1], changed)


def test_alpha_survives_a_webp_round_trip():
    source = _source()
    alpha = Image.fromarray(np.array(source.convert("L"))[::-1])
    rgba = source.copy()
    rgba.putalpha(alpha)
    decoded = decode_image(_encode(rgba, "PNG"), LIMIT)
    written = _open(encode_image(decoded, decoded.pixels, "WEBP"))
    assert written.mode == "RGBA"
    assert _mean_abs_diff(np.array(written.getchannel("A")), np.array(alpha)) < 2


def test_alpha_is_dropped_for_jpeg_output():
    rgba = _source().convert("RGBA")
    decoded = decode_image(_encode(rgba, "PNG"), LIMIT)
    assert _open(encode_image(decoded, decoded.pixels, "JPEG")).mode == "RGB"


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_greyscale_stays_one_channel(format: str):
    grey = _source().convert("L")
    decoded = decode_image(_encode(grey, "JPEG", quality=95), LIMIT)
    written = _open(encode_image(decoded, decoded.pixels, format))
    assert written.mode == "L"
    assert written.size == grey.size
    assert _mean_abs_diff(np.array(written), np.array(grey)) < 3


def test_sixteen_bit_greyscale_is_written_as_eight_bit_greyscale():
    grey8 = np.array(_source().convert("L"))
    decoded = decode_image(_encode(Image.fromarray(grey8.astype(np.uint16) * 257), "PNG"), LIMIT)
    written = _open(encode_image(decoded, decoded.pixels, "PNG"))
    assert written.mode == "L"
    assert np.abs(np.array(written).astype(int) - grey8).max() <= 1


def test_greyscale_with_alpha_keeps_both():
    la = _source().convert("LA")
    la.putalpha(Image.fromarray(np.array(_source().convert("L"))[:, ::-1]))
    decoded = decode_image(_encode(la, "PNG"), LIMIT)
    assert decoded.greyscale and decoded.alpha is not None
    written = _open(encode_image(decoded, decoded.pixels, "PNG"))
    assert written.mode == "LA"
    assert np.array_equal(np.array(written), np.array(la))


@pytest.mark.parametrize("format", ["JPEG", "PNG", "WEBP"])
def test_colour_photo_round_trip_keeps_size_and_content(format: str):
    source = _source()
    decoded = decode_image(PHOTO.read_bytes(), LIMIT)
    written = _open(encode_image(decoded, decoded.pixels, format))
    assert written.format == format
    assert written.mode == "RGB"
    assert written.size == source.size
    tolerance = 0 if format == "PNG" else 3
    assert _mean_abs_diff(_bgr(written), decoded.pixels) <= tolerance


def test_quality_changes_jpeg_size():
    decoded = decode_image(PHOTO.read_bytes(), LIMIT)
    low = encode_image(decoded, decoded.pixels, "JPEG", quality=20)
    high = encode_image(decoded, decoded.pixels, "JPEG", quality=95)
    assert len(low) < len(high)


# ---------------------------------------------------------------- output_format


@pytest.mark.parametrize(
    ("name", "format"),
    [
        ("a.jpg", "JPEG"),
        ("a.jpeg", "JPEG"),
        ("dir/A.JPG", "JPEG"),
        ("a.png", "PNG"),
        ("a.PNG", "PNG"),
        ("a.webp", "WEBP"),
        (Path("x/y.tar.jpeg"), "JPEG"),
    ],
)
def test_output_format_by_extension(name: str, format: str):
    assert output_format(name) == format


@pytest.mark.parametrize("name", ["a.tif", "a.gif", "a.bmp", "a.txt", "a", "a.jpg.bak"])
def test_output_format_rejects_other_extensions(name: str):
    with pytest.raises(BadImageError, match=r"cannot write"):
        output_format(name)


def test_maker_note_is_always_removed_but_other_exif_kept():
    photo = Image.open(SAMPLES / "crowd_0.jpg")
    exif = Image.Exif()
    exif[0x010F] = "Nikon"
    details = exif.get_ifd(ExifTags.IFD.Exif)
    details[0x927C] = b"NIKON\x00" + (SAMPLES / "crowd_0.jpg").read_bytes()[:2000]  # an embedded preview
    details[0x9003] = "2024:01:01 10:00:00"
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", exif=exif)
    decoded = decode_image(buffer.getvalue(), 10**9)
    written = Image.open(io.BytesIO(encode_image(decoded, decoded.pixels, "JPEG"))).getexif()
    assert written[0x010F] == "Nikon"
    assert written.get_ifd(ExifTags.IFD.Exif) == {0x9003: "2024:01:01 10:00:00"}
