//! Profile-picture processing: whatever JPEG, PNG, GIF or WebP a user sends
//! becomes a 300x300 JPEG, upright, centre-cropped, metadata stripped.
//!
//! The format is detected from the bytes, never from a name. Before any
//! pixel is decoded, [`inspect`] reads the header and works out, in bytes,
//! the most memory the whole conversion can take (the decoded image, what
//! the decoder may hold beside it, and the resampling buffer); an image over
//! [`MAX_WORKING_BYTES`] is refused, so a small file that claims to be a
//! huge image (a decompression bomb) costs nothing. The conversion then
//! makes no full-size copy: the centre square is resampled straight from
//! the decoded image, and turning it upright happens on the 300x300 result.

use std::io::Cursor;

use image::{
    DynamicImage, GenericImageView, ImageBuffer, ImageDecoder, ImageFormat, ImageReader, Limits,
    Pixel, Rgb, RgbImage, RgbaImage,
    codecs::jpeg::JpegEncoder,
    imageops::{self, FilterType},
    metadata::Orientation,
};

/// The largest upload accepted, in bytes.
pub const MAX_UPLOAD_BYTES: usize = 5 * 1024 * 1024;
/// Side of the square result, in pixels.
pub const AVATAR_SIDE: u32 = 300;
/// JPEG quality of the result.
const JPEG_QUALITY: u8 = 85;
/// The largest width or height decoded.
const MAX_DIMENSION: u32 = 10_000;
/// The most memory one conversion may take, all buffers counted: room for
/// a 24-megapixel photo (about 160 MiB), not for a 10000x10000 one.
pub const MAX_WORKING_BYTES: u64 = 192 * 1024 * 1024;
/// Bytes of the resampling buffer per pixel of its width and height (four
/// `f32` channels).
const RESAMPLE_BYTES_PER_PIXEL: u64 = 16;

/// Why an upload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Over [`MAX_UPLOAD_BYTES`].
    #[error("File too large. Maximum size is 5MB")]
    TooLarge,
    /// Decoding would take more than [`MAX_WORKING_BYTES`].
    #[error("Image dimensions too large. Please upload a smaller picture.")]
    TooManyPixels,
    /// Not a JPEG, PNG, GIF or WebP we can decode within the limits.
    #[error("Invalid image file. Please upload a valid image (JPEG, PNG, GIF, WebP).")]
    Invalid,
}

/// An upload whose header has been read and whose cost is known.
#[derive(Debug)]
pub struct Inspected {
    /// The upload.
    bytes: Vec<u8>,
    /// Its format.
    format: ImageFormat,
    /// The most memory converting it takes, in bytes.
    working_bytes: u64,
}

/// Reads the header of `upload` (never its pixels) and refuses what cannot
/// be an avatar within the bounds.
pub fn inspect(upload: Vec<u8>) -> Result<Inspected, ImageError> {
    if upload.len() > MAX_UPLOAD_BYTES {
        return Err(ImageError::TooLarge);
    }
    let mut reader = ImageReader::new(Cursor::new(upload.as_slice()))
        .with_guessed_format()
        .map_err(|_| ImageError::Invalid)?;
    let format = match reader.format() {
        Some(
            format @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP),
        ) => format,
        _ => return Err(ImageError::Invalid),
    };
    reader.limits(limits());
    let decoder = reader.into_decoder().map_err(refusal)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(ImageError::TooManyPixels);
    }
    let working_bytes = working_bytes(decoder.total_bytes(), width.min(height));
    drop(decoder);
    if working_bytes > MAX_WORKING_BYTES {
        return Err(ImageError::TooManyPixels);
    }
    Ok(Inspected {
        bytes: upload,
        format,
        working_bytes,
    })
}

/// The decoders' own bounds: dimensions, and what they may allocate.
fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_WORKING_BYTES);
    limits
}

/// Why a decoder gave up, as the client is told.
fn refusal(e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::Limits(_) => ImageError::TooManyPixels,
        _ => ImageError::Invalid,
    }
}

/// The most memory a conversion takes: the decoded image, as much again for
/// what a decoder may keep beside its output (row buffers, a GIF's canvas,
/// WebP's colour planes), the resampling buffer of the centre square, and a
/// mebibyte for the small result.
fn working_bytes(decoded: u64, side: u32) -> u64 {
    decoded
        .saturating_mul(2)
        .saturating_add(u64::from(side) * u64::from(AVATAR_SIDE) * RESAMPLE_BYTES_PER_PIXEL)
        .saturating_add(1024 * 1024)
}

impl Inspected {
    /// The most memory converting it takes, in bytes.
    pub fn working_bytes(&self) -> u64 {
        self.working_bytes
    }

    /// The stored avatar: a 300x300 JPEG.
    pub fn to_avatar(self) -> Result<Vec<u8>, ImageError> {
        let mut reader = ImageReader::with_format(Cursor::new(self.bytes.as_slice()), self.format);
        reader.limits(limits());
        let mut decoder = reader.into_decoder().map_err(refusal)?;
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        let image = DynamicImage::from_decoder(decoder).map_err(refusal)?;
        let mut avatar = DynamicImage::ImageRgba8(centre_square_resized(&image));
        drop(image);
        avatar.apply_orientation(orientation);
        let avatar = flatten(avatar.into_rgba8());
        let mut jpeg = Vec::new();
        // Re-encoding writes pixels only: EXIF, GPS and other metadata are gone.
        JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
            .encode_image(&avatar)
            .map_err(|_| ImageError::Invalid)?;
        Ok(jpeg)
    }
}

/// The largest centred square of `image`, resampled to the avatar's size
/// without copying it first. The common 8-bit layouts are read directly;
/// others through a per-pixel conversion.
fn centre_square_resized(image: &DynamicImage) -> RgbaImage {
    match image {
        DynamicImage::ImageRgba8(rgba) => square(rgba),
        DynamicImage::ImageRgb8(rgb) => DynamicImage::ImageRgb8(square(rgb)).into_rgba8(),
        other => square(other),
    }
}

fn square<I>(image: &I) -> ImageBuffer<I::Pixel, Vec<<I::Pixel as Pixel>::Subpixel>>
where
    I: GenericImageView,
    I::Pixel: 'static,
    <I::Pixel as Pixel>::Subpixel: 'static,
{
    let (width, height) = image.dimensions();
    let side = width.min(height);
    let view = imageops::crop_imm(image, (width - side) / 2, (height - side) / 2, side, side);
    imageops::resize(&*view, AVATAR_SIDE, AVATAR_SIDE, FilterType::Lanczos3)
}

/// Composites transparent pixels onto white: JPEG has no alpha, and
/// dropping it would turn transparent areas into whatever colour they hide.
fn flatten(rgba: RgbaImage) -> RgbImage {
    let mut rgb = RgbImage::new(rgba.width(), rgba.height());
    for (out, pixel) in rgb.pixels_mut().zip(rgba.pixels()) {
        let [r, g, b, a] = pixel.0;
        let over_white =
            |c: u8| ((u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a))) / 255) as u8;
        *out = Rgb([over_white(r), over_white(g), over_white(b)]);
    }
    rgb
}

#[cfg(test)]
mod tests {
    use image::{ImageEncoder, Rgba, RgbaImage};

    use super::*;

    /// The whole conversion of an upload, as the service runs it.
    fn to_avatar(upload: &[u8]) -> Result<Vec<u8>, ImageError> {
        inspect(upload.to_vec())?.to_avatar()
    }

    fn encoded(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    /// Red on the left half, blue on the right.
    fn two_tone(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, _| {
            if x < width / 2 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        })
    }

    fn assert_avatar(jpeg: &[u8]) -> RgbImage {
        assert_eq!(image::guess_format(jpeg).unwrap(), ImageFormat::Jpeg);
        let image = image::load_from_memory(jpeg).unwrap().into_rgb8();
        assert_eq!(image.dimensions(), (AVATAR_SIDE, AVATAR_SIDE));
        image
    }

    fn is_red(p: &Rgb<u8>) -> bool {
        p[0] > 200 && p[1] < 60 && p[2] < 60
    }

    fn is_blue(p: &Rgb<u8>) -> bool {
        p[0] < 60 && p[1] < 60 && p[2] > 200
    }

    #[test]
    fn jpeg_png_gif_and_webp_become_300_square_jpegs() {
        let picture = DynamicImage::ImageRgb8(two_tone(640, 480));
        for format in [
            ImageFormat::Jpeg,
            ImageFormat::Png,
            ImageFormat::Gif,
            ImageFormat::WebP,
        ] {
            let avatar = assert_avatar(&to_avatar(&encoded(picture.clone(), format)).unwrap());
            // Centre-cropped: both halves remain, split down the middle.
            assert!(is_red(avatar.get_pixel(40, 150)), "{format:?}");
            assert!(is_blue(avatar.get_pixel(260, 150)), "{format:?}");
        }
    }

    #[test]
    fn transparent_png_areas_become_white() {
        let png = RgbaImage::from_fn(50, 50, |x, _| {
            if x < 25 {
                Rgba([0, 0, 0, 0])
            } else {
                Rgba([0, 128, 0, 255])
            }
        });
        let avatar = assert_avatar(
            &to_avatar(&encoded(DynamicImage::ImageRgba8(png), ImageFormat::Png)).unwrap(),
        );
        let transparent = avatar.get_pixel(30, 150);
        assert!(transparent.0.iter().all(|c| *c > 240), "{transparent:?}");
        let green = avatar.get_pixel(270, 150);
        assert!(green[1] > 100 && green[0] < 40, "{green:?}");
    }

    #[test]
    fn an_exif_rotated_photo_comes_out_upright() {
        // Stored sideways (red left, blue right) with EXIF orientation 6:
        // "rotate 90° clockwise to display", i.e. red on top, blue below.
        let tiff_orientation_6: Vec<u8> = vec![
            0x4D, 0x4D, 0x00, 0x2A, 0x00, 0x00, 0x00, 0x08, // big-endian TIFF, IFD at 8
            0x00, 0x01, // one entry
            0x01, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x00,
            0x00, // Orientation = 6
            0x00, 0x00, 0x00, 0x00, // no next IFD
        ];
        let stored = two_tone(400, 200);
        let mut jpeg = Vec::new();
        let mut encoder = JpegEncoder::new_with_quality(&mut jpeg, 95);
        encoder.set_exif_metadata(tiff_orientation_6).unwrap();
        encoder.encode_image(&stored).unwrap();

        let avatar = assert_avatar(&to_avatar(&jpeg).unwrap());
        assert!(
            is_red(avatar.get_pixel(150, 30)),
            "{:?}",
            avatar.get_pixel(150, 30)
        );
        assert!(
            is_blue(avatar.get_pixel(150, 270)),
            "{:?}",
            avatar.get_pixel(150, 270)
        );
        // And the metadata is gone.
        let mut decoder = ImageReader::new(Cursor::new(to_avatar(&jpeg).unwrap()))
            .with_guessed_format()
            .unwrap()
            .into_decoder()
            .unwrap();
        assert_eq!(decoder.exif_metadata().unwrap(), None);
    }

    #[test]
    fn over_5_mib_is_too_large() {
        let upload = vec![0u8; MAX_UPLOAD_BYTES + 1];
        assert_eq!(to_avatar(&upload), Err(ImageError::TooLarge));
    }

    #[test]
    fn text_truncated_and_other_formats_are_invalid() {
        let png = encoded(DynamicImage::ImageRgb8(two_tone(64, 64)), ImageFormat::Png);
        let bmp = [b"BM".as_slice(), &[0u8; 60]].concat();
        let cases: [&[u8]; 5] = [
            b"hello, I am a text file",
            b"",
            &png[..png.len() / 2],
            &bmp,
            b"\x89PNG\r\n\x1a\n",
        ];
        for upload in cases {
            assert_eq!(to_avatar(upload), Err(ImageError::Invalid));
        }
    }

    #[test]
    fn a_huge_dimension_bomb_is_refused_before_decoding() {
        // A valid PNG header claiming 100000 x 100000 pixels (30 GB decoded),
        // with almost no data behind it.
        let png = png_header(100_000, 100_000, 8, 2);
        assert_eq!(to_avatar(&png), Err(ImageError::TooManyPixels));
    }

    #[test]
    fn the_cost_of_a_conversion_is_known_from_the_header_alone() {
        // 10000 x 10000 pixels of 16-bit RGBA: 800 MB decoded. Only the
        // header is there; the answer must not need the pixels.
        let huge = png_header(10_000, 10_000, 16, 6);
        assert_eq!(inspect(huge).unwrap_err(), ImageError::TooManyPixels);
        // A 24-megapixel photo's header passes, with its cost counted.
        let photo = png_header(6_000, 4_000, 8, 2);
        let inspected = inspect(photo).unwrap();
        assert_eq!(
            inspected.working_bytes(),
            2 * 6_000 * 4_000 * 3 + 4_000 * 300 * 16 + 1024 * 1024
        );
        assert!(inspected.working_bytes() <= MAX_WORKING_BYTES);
    }

    #[test]
    fn a_24_megapixel_photo_becomes_an_avatar() {
        let photo = DynamicImage::ImageRgb8(two_tone(6_000, 4_000));
        let jpeg = encoded(photo, ImageFormat::Jpeg);
        assert!(jpeg.len() <= MAX_UPLOAD_BYTES, "{}", jpeg.len());
        let avatar = assert_avatar(&to_avatar(&jpeg).unwrap());
        assert!(is_red(avatar.get_pixel(40, 150)));
        assert!(is_blue(avatar.get_pixel(260, 150)));
    }

    /// A PNG signature and IHDR chunk for `width` x `height` pixels of
    /// `depth` bits in colour type `color`, with nothing after it.
    fn png_header(width: u32, height: u32, depth: u8, color: u8) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        // The start of the pixel data, which is where a header ends.
        let idat = b"IDAT\0\0\0\0\0\0\0\0";
        png.extend_from_slice(&8u32.to_be_bytes());
        png.extend_from_slice(idat);
        png.extend_from_slice(&crc32(idat).to_be_bytes());
        png
    }

    /// CRC-32 (ISO-HDLC), as PNG chunks carry.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
