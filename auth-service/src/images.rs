//! Profile-picture processing: whatever JPEG, PNG, GIF or WebP a user sends
//! becomes a 300x300 JPEG, upright, centre-cropped, metadata stripped.
//!
//! The format is detected from the bytes, never from a name. Decoding runs
//! under limits on dimensions and memory, so a small file that claims to be
//! a gigapixel image (a decompression bomb) is refused before it is decoded.

use std::io::Cursor;

use image::{
    DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, Rgb, RgbImage,
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
/// The most memory one decode may allocate.
const MAX_DECODE_ALLOC: u64 = 128 * 1024 * 1024;

/// Why an upload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Over [`MAX_UPLOAD_BYTES`].
    #[error("File too large. Maximum size is 5MB")]
    TooLarge,
    /// Not a JPEG, PNG, GIF or WebP we can decode within the limits.
    #[error("Invalid image file. Please upload a valid image (JPEG, PNG, GIF, WebP).")]
    Invalid,
}

/// Turns an upload into the stored avatar: a 300x300 JPEG.
pub fn to_avatar(upload: &[u8]) -> Result<Vec<u8>, ImageError> {
    if upload.len() > MAX_UPLOAD_BYTES {
        return Err(ImageError::TooLarge);
    }
    let image = decode(upload).ok_or(ImageError::Invalid)?;
    let square = centre_square(&flatten(image));
    let avatar = imageops::resize(&square, AVATAR_SIDE, AVATAR_SIDE, FilterType::Lanczos3);
    let mut jpeg = Vec::new();
    // Re-encoding writes pixels only: EXIF, GPS and other metadata are gone.
    JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode_image(&avatar)
        .map_err(|_| ImageError::Invalid)?;
    Ok(jpeg)
}

/// Decodes an accepted format within the limits, turned upright.
fn decode(upload: &[u8]) -> Option<DynamicImage> {
    let mut reader = ImageReader::new(Cursor::new(upload))
        .with_guessed_format()
        .ok()?;
    match reader.format() {
        Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP) => {}
        _ => return None,
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().ok()?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).ok()?;
    image.apply_orientation(orientation);
    Some(image)
}

/// Composites transparent pixels onto white: JPEG has no alpha, and
/// dropping it would turn transparent areas into whatever colour they hide.
fn flatten(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let mut rgb = RgbImage::new(rgba.width(), rgba.height());
    for (out, pixel) in rgb.pixels_mut().zip(rgba.pixels()) {
        let [r, g, b, a] = pixel.0;
        let over_white =
            |c: u8| ((u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a))) / 255) as u8;
        *out = Rgb([over_white(r), over_white(g), over_white(b)]);
    }
    rgb
}

/// The largest centred square of `image`.
fn centre_square(image: &RgbImage) -> RgbImage {
    let (width, height) = image.dimensions();
    let side = width.min(height);
    imageops::crop_imm(image, (width - side) / 2, (height - side) / 2, side, side).to_image()
}

#[cfg(test)]
mod tests {
    use image::{ImageEncoder, Rgba, RgbaImage};

    use super::*;

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
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        png.extend_from_slice(&[0u8; 64]);
        assert_eq!(to_avatar(&png), Err(ImageError::Invalid));
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
