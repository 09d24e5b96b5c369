//! NumPy `.npy` reading and writing: exact layout, round trips, accepted header variants
//! and typed errors on malformed or unsupported files.
//! (numpy itself reads and writes these files in artifact.rs's Python test.)

use socflow_runtime::npy::{from_npy_bytes, read_npy_f64, to_npy_bytes, write_npy};
use socflow_runtime::Error;

/// A file as numpy 1.x/2.x writes it: version 1.0, header padded with spaces to a
/// multiple of 64 bytes in all, ending in a newline.
fn numpy_file(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    let total = (10 + header.len() + 1).next_multiple_of(64);
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn writes_exactly_what_numpy_writes() {
    // numpy.save("x.npy", np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let want = numpy_file(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }",
        &f64_bytes(&data),
    );
    assert_eq!(to_npy_bytes(&[2, 3], &data).unwrap(), want);
    assert_eq!(want.len(), 128 + 48);
    assert_eq!(want[127], b'\n');
    // numpy.save("x.npy", np.array([0.5, -1.0], dtype=np.float32))
    let want = numpy_file(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
        &[0.5f32, -1.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    assert_eq!(to_npy_bytes(&[2], &[0.5f32, -1.0]).unwrap(), want);
}

#[test]
fn round_trips_f32_and_f64() {
    let v64: Vec<f64> = (0..35).map(|i| (i as f64).sin() * 1e3 + 1e-300).collect();
    let bytes = to_npy_bytes(&[5, 7], &v64).unwrap();
    let (shape, back) = from_npy_bytes(&bytes).unwrap();
    assert_eq!(shape, [5, 7]);
    assert_eq!(
        back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        v64.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    let v32: Vec<f32> = (0..9).map(|i| (i as f32).sqrt() - 1.5).collect();
    let (shape, back) = from_npy_bytes(&to_npy_bytes(&[9], &v32).unwrap()).unwrap();
    assert_eq!(shape, [9]);
    assert_eq!(back, v32.iter().map(|&x| x as f64).collect::<Vec<_>>());
    // Empty arrays and non-finite values pass through unchanged.
    let (shape, back) = from_npy_bytes(&to_npy_bytes::<f64>(&[0, 4], &[]).unwrap()).unwrap();
    assert_eq!((shape, back), (vec![0, 4], vec![]));
    let special = [f64::NAN, f64::INFINITY, -0.0];
    let (_, back) = from_npy_bytes(&to_npy_bytes(&[3], &special).unwrap()).unwrap();
    assert!(
        back[0].is_nan() && back[1] == f64::INFINITY && back[2].to_bits() == (-0.0f64).to_bits()
    );
}

#[test]
fn files_round_trip_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("samples.npy");
    let v: Vec<f64> = (0..6).map(|i| i as f64 / 7.0).collect();
    write_npy(&path, &[3, 2], &v).unwrap();
    assert_eq!(read_npy_f64(&path).unwrap(), (vec![3, 2], v.clone()));
    write_npy(&path, &[6], &v).unwrap();
    assert_eq!(read_npy_f64(&path).unwrap(), (vec![6], v.clone()));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["samples.npy"]);
    // A refused write leaves the old file.
    assert!(matches!(
        write_npy(&path, &[4], &v),
        Err(Error::Length {
            found: 6,
            expected: 4,
            ..
        })
    ));
    assert_eq!(read_npy_f64(&path).unwrap(), (vec![6], v.clone()));
    assert!(matches!(
        write_npy(&path, &[1, 1, 1, 1, 1, 1, 1, 2, 3], &v),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        write_npy::<f64>(&path, &[], &[]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        read_npy_f64(dir.path().join("absent.npy")),
        Err(Error::Io { .. })
    ));
    // Errors name the file.
    let bad = dir.path().join("bad.npy");
    std::fs::write(&bad, b"not numpy at all").unwrap();
    match read_npy_f64(&bad) {
        Err(Error::Format(msg)) => {
            assert!(msg.contains("bad.npy") && msg.contains("magic"), "{msg}")
        }
        other => panic!("expected Error::Format, got {other:?}"),
    }
}

#[test]
fn accepts_the_header_variants_numpy_and_python_produce() {
    let data = f64_bytes(&[1.0, 2.0, 3.0, 4.0]);
    for dict in [
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2)}",
        "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (2, 2)}",
        "{'shape': (2, 2), 'fortran_order': False, 'descr': '<f8'}",
        "{'descr':'<f8','fortran_order':False,'shape':(2,2,),}",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2L, 2L), }",
        "  {  'descr' : '<f8' , 'fortran_order' : False , 'shape' : ( 2 , 2 ) }  ",
    ] {
        let (shape, values) =
            from_npy_bytes(&numpy_file(dict, &data)).unwrap_or_else(|e| panic!("{dict}: {e}"));
        assert_eq!(shape, [2, 2], "{dict}");
        assert_eq!(values, [1.0, 2.0, 3.0, 4.0], "{dict}");
    }
    // Format 2.0: a 4-byte header length.
    let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }\n";
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    v2.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    v2.extend_from_slice(dict.as_bytes());
    v2.extend_from_slice(&data);
    assert_eq!(
        from_npy_bytes(&v2).unwrap(),
        (vec![4], vec![1.0, 2.0, 3.0, 4.0])
    );
}

#[test]
fn unsupported_arrays_are_typed_errors() {
    let data = f64_bytes(&[1.0, 2.0, 3.0, 4.0]);
    for (dict, needle) in [
        (
            "{'descr': '>f8', 'fortran_order': False, 'shape': (4,), }",
            ">f8",
        ),
        (
            "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }",
            "<i8",
        ),
        (
            "{'descr': '<f2', 'fortran_order': False, 'shape': (16,), }",
            "<f2",
        ),
        (
            "{'descr': '|u1', 'fortran_order': False, 'shape': (32,), }",
            "|u1",
        ),
        (
            "{'descr': '<c16', 'fortran_order': False, 'shape': (2,), }",
            "<c16",
        ),
        (
            "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 2), }",
            "Fortran",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (), }",
            "0 dimensions",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2, 2), }",
            "3 dimensions",
        ),
    ] {
        match from_npy_bytes(&numpy_file(dict, &data)) {
            Err(Error::Unsupported(msg)) => assert!(msg.contains(needle), "{dict}: {msg}"),
            other => panic!("{dict}: expected Error::Unsupported, got {other:?}"),
        }
    }
    let mut v9 = numpy_file(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }",
        &data,
    );
    v9[6] = 9;
    assert!(matches!(from_npy_bytes(&v9), Err(Error::Unsupported(m)) if m.contains("9.0")));
}

#[test]
fn malformed_files_are_format_errors() {
    let data = f64_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let ok = "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }";
    for (dict, needle) in [
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4), }",
            "tuple",
        ),
        ("{'descr': '<f8', 'fortran_order': False}", "shape"),
        ("{'descr': '<f8', 'shape': (4,)}", "fortran_order"),
        ("{'fortran_order': False, 'shape': (4,)}", "descr"),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), 'x': 1}",
            "unknown",
        ),
        (
            "{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (4,)}",
            "repeats",
        ),
        (
            "{'descr': '<f8', 'fortran_order': 0, 'shape': (4,)}",
            "True or False",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (-4,)}",
            "dimension",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4,)",
            "expected",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4,)} x",
            "trailing",
        ),
        (
            "{'descr': '<f8, 'fortran_order': False, 'shape': (4,)}",
            "header",
        ),
        ("['descr', '<f8']", "expected '{'"),
        ("", "expected '{'"),
    ] {
        match from_npy_bytes(&numpy_file(dict, &data)) {
            Err(Error::Format(msg)) => assert!(msg.contains(needle), "{dict}: {msg}"),
            other => panic!("{dict}: expected Error::Format, got {other:?}"),
        }
    }
    // Data shorter or longer than the shape says.
    for n in [0, 8, 24, 40] {
        match from_npy_bytes(&numpy_file(
            ok,
            &data[..n.min(32)]
                .iter()
                .chain(&[0; 8][..n.saturating_sub(32)])
                .copied()
                .collect::<Vec<_>>(),
        )) {
            Err(Error::Format(msg)) => assert!(msg.contains("needs 32"), "{n}: {msg}"),
            other => panic!("{n} data bytes: expected Error::Format, got {other:?}"),
        }
    }
    // Bad magic, non-UTF-8 header, header past the end.
    let good = numpy_file(ok, &data);
    let mut b = good.clone();
    b[1] = b'X';
    assert!(matches!(from_npy_bytes(&b), Err(Error::Format(m)) if m.contains("magic")));
    let mut b = good.clone();
    b[12] = 0xff;
    assert!(matches!(from_npy_bytes(&b), Err(Error::Format(_))));
    let mut b = good.clone();
    b[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
    assert!(matches!(from_npy_bytes(&b), Err(Error::Format(m)) if m.contains("past the end")));
    // A shape whose size overflows is a limit error, not an allocation.
    let huge = numpy_file(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904, 4), }",
        &data,
    );
    assert!(matches!(from_npy_bytes(&huge), Err(Error::Limit(_))));
    let huge = numpy_file(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999999,), }",
        &data,
    );
    assert!(matches!(from_npy_bytes(&huge), Err(Error::Format(m)) if m.contains("dimension")));
}

#[test]
fn every_truncation_and_flipped_byte_is_handled() {
    let v: Vec<f64> = (0..6).map(|i| i as f64 - 2.5).collect();
    let bytes = to_npy_bytes(&[2, 3], &v).unwrap();
    for len in 0..bytes.len() {
        assert!(
            matches!(from_npy_bytes(&bytes[..len]), Err(Error::Format(_))),
            "prefix of {len} bytes"
        );
    }
    let header_end = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let mut changed = 0;
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0xff;
        match from_npy_bytes(&b) {
            Ok((shape, values)) => {
                assert!(i >= header_end, "byte {i} of the header accepted");
                assert_eq!(shape, [2, 3]);
                let diff = values
                    .iter()
                    .zip(&v)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(diff, 1, "byte {i}");
                changed += 1;
            }
            Err(Error::Format(_) | Error::Unsupported(_) | Error::Limit(_)) => {
                assert!(i < header_end, "byte {i}");
            }
            Err(e) => panic!("byte {i}: {e:?}"),
        }
    }
    assert_eq!(changed, bytes.len() - header_end);
}
