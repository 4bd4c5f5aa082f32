//! Random input into the pure-Rust deframers and codecs: no panic, bounded
//! buffers, and no lost frame when valid frames are buried in noise.
//!
//! A property test without a property-testing crate: a fixed-seed xorshift
//! generator keeps it dependency-free and reproducible, and at these counts it
//! runs in well under a second in `cargo test`.

use _core_rs::{di, dlt645, modbus_rtu};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: plenty for test input, deterministic across platforms
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let mut address = [0u8; 6];
    for b in &mut address {
        *b = (rng.below(10) as u8) << 4 | rng.below(10) as u8;
    }
    let functions = [0x03u8, 0x08, 0x11, 0x12, 0x13, 0x14, 0x1C];
    let control = functions[rng.below(functions.len())] | [0x00, 0x80, 0xC0][rng.below(3)];
    let data = rng.bytes(255);
    dlt645::encode(&address, control, &data, 0).expect("valid parts")
}

#[test]
fn dlt645_decode_random_bytes_never_panics() {
    let mut rng = Rng(0x645);
    for _ in 0..20_000 {
        let bytes = rng.bytes(300);
        if let Ok(frame) = dlt645::decode(&bytes) {
            // what decodes re-encodes to the same bytes (leading FE aside)
            let start = bytes.iter().position(|&b| b != 0xFE).unwrap_or(bytes.len());
            assert_eq!(frame.encode(0), bytes[start..]);
        }
    }
}

#[test]
fn dlt645_deframer_random_chunks_stay_bounded() {
    let mut rng = Rng(0x2007);
    for _ in 0..300 {
        let mut d = dlt645::Deframer::new(dlt645::MIN_BUFFER).unwrap();
        let mut out = Vec::new();
        for _ in 0..20 {
            d.feed(&rng.bytes(400), &mut out);
            assert!(d.buffered() < dlt645::MIN_BUFFER);
        }
        for f in &out {
            assert_eq!(dlt645::decode(&f.encode(0)).unwrap(), *f);
        }
    }
}

#[test]
fn dlt645_no_frame_lost_in_noise_at_the_smallest_buffer() {
    let mut rng = Rng(0x68);
    for _ in 0..300 {
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for _ in 0..rng.below(6) + 1 {
            // noise without a start byte cannot form or swallow a frame: one right answer
            stream.extend(rng.bytes(300).into_iter().filter(|&b| b != 0x68));
            stream.extend(std::iter::repeat_n(0xFE, rng.below(5)));
            let f = random_frame(&mut rng);
            stream.extend_from_slice(&f);
            sent.push(f);
        }
        let mut d = dlt645::Deframer::new(dlt645::MIN_BUFFER).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let n = (rng.below(96) + 1).min(stream.len() - at);
            d.feed(&stream[at..at + n], &mut out);
            at += n;
        }
        let got: Vec<Vec<u8>> = out.iter().map(|f| f.encode(0)).collect();
        assert_eq!(got, sent);
    }
}

#[test]
fn modbus_deframer_random_bytes_never_panics() {
    let mut rng = Rng(0x485);
    for role in [modbus_rtu::Role::Request, modbus_rtu::Role::Response] {
        for _ in 0..300 {
            let mut d = modbus_rtu::Deframer::new(role, 256).unwrap();
            for _ in 0..20 {
                for f in d.feed(&rng.bytes(300)) {
                    assert!(modbus_rtu::check(&f));
                }
                assert!(d.buffered() <= 256);
            }
        }
    }
}

#[test]
fn value_codec_random_bytes_never_panics_and_round_trips() {
    let mut rng = Rng(0xBCD);
    let table = di::table();
    for _ in 0..20_000 {
        let info = &table[rng.below(table.len())];
        let exact = rng.below(2) == 0;
        let data = if exact {
            let n = info.length as usize * info.count as usize;
            (0..n).map(|_| rng.next() as u8).collect()
        } else {
            rng.bytes(40)
        };
        if let Ok(value) = di::decode_with(info, &data) {
            let wire = di::encode_with(info, &value).expect("a decoded value re-encodes");
            assert_eq!(di::decode_with(info, &wire).unwrap(), value);
        }
    }
}
