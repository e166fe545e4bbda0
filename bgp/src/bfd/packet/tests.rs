//! Bytes paired with values, both ways. The vectors were captured here on
//! 2026-12-05 with tcpdump on a veth pair between two namespaces: BIRD
//! 2.0.12 (`protocol bfd`, 10.77.0.1 / fd77::1) against FRR 8.4.4 `bfdd`
//! (10.77.0.2 / fd77::2), both with 300 ms intervals and multiplier 3,
//! through session start, FRR changing its transmit interval to 500 ms
//! (a Poll sequence), FRR's `shutdown` (AdminDown) and BIRD's protocol being
//! disabled (FRR's detection time expiring).

use proptest::prelude::*;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn nz8(n: u8) -> NonZeroU8 {
    NonZeroU8::new(n).unwrap()
}

fn nz32(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn pkt(state: State, my: u32, your: u32, tx: u32, rx: u32, echo: u32) -> ControlPacket {
    ControlPacket {
        diag: Diag::None,
        state,
        poll: false,
        final_: false,
        cpi: false,
        demand: false,
        detect_mult: nz8(3),
        my_disc: nz32(my),
        your_disc: your,
        desired_min_tx: tx,
        required_min_rx: rx,
        required_min_echo_rx: echo,
    }
}

/// (where it came from, bytes, value)
fn vectors() -> Vec<(&'static str, &'static str, ControlPacket)> {
    let bird = 0xbf4b_5c0e;
    let frr = 0x9a1b_76c1;
    vec![
        (
            "BIRD, first packet: Down, slow 1 s transmission while not Up",
            "20400318bf4b5c0e00000000000f4240000493e000000000",
            pkt(State::Down, bird, 0, 1_000_000, 300_000, 0),
        ),
        (
            "BIRD over IPv6, first packet",
            "2040031874e0a13c00000000000f4240000493e000000000",
            pkt(State::Down, 0x74e0_a13c, 0, 1_000_000, 300_000, 0),
        ),
        (
            "FRR answers Down -> Init (it asks for 50 ms echo, which we ignore)",
            "208003189a1b76c1bf4b5c0e000f4240000f42400000c350",
            pkt(State::Init, frr, bird, 1_000_000, 1_000_000, 50_000),
        ),
        (
            "BIRD Up with Poll: its interval drops from 1 s to 300 ms",
            "20e00318bf4b5c0e9a1b76c1000493e0000493e000000000",
            ControlPacket {
                poll: true,
                ..pkt(State::Up, bird, frr, 300_000, 300_000, 0)
            },
        ),
        (
            "FRR's Final to BIRD's Poll",
            "20d003189a1b76c1bf4b5c0e000493e0000493e00000c350",
            ControlPacket {
                final_: true,
                ..pkt(State::Up, frr, bird, 300_000, 300_000, 50_000)
            },
        ),
        (
            "BIRD Up, steady state",
            "20c00318bf4b5c0e9a1b76c1000493e0000493e000000000",
            pkt(State::Up, bird, frr, 300_000, 300_000, 0),
        ),
        (
            "FRR Up with Poll after its transmit interval went to 500 ms",
            "20e003189a1b76c1bf4b5c0e0007a120000493e00000c350",
            ControlPacket {
                poll: true,
                ..pkt(State::Up, frr, bird, 500_000, 300_000, 50_000)
            },
        ),
        (
            "FRR after `shutdown`: AdminDown",
            "200003189a1b76c1bf4b5c0e0007a120000493e00000c350",
            pkt(State::AdminDown, frr, bird, 500_000, 300_000, 50_000),
        ),
        (
            "BIRD goes Down, diag 3 (neighbor signaled down), with Poll",
            "23600318bf4b5c0e9a1b76c1000f4240000493e000000000",
            ControlPacket {
                diag: Diag::NeighborDown,
                poll: true,
                ..pkt(State::Down, bird, frr, 1_000_000, 300_000, 0)
            },
        ),
        (
            "FRR, AdminDown, answers with Final",
            "201003189a1b76c1bf4b5c0e0007a120000493e00000c350",
            ControlPacket {
                final_: true,
                ..pkt(State::AdminDown, frr, bird, 500_000, 300_000, 50_000)
            },
        ),
        (
            "FRR Down, diag 1 (detection time expired) after BIRD went silent",
            "214003189a1b76c100000000000f4240000f42400000c350",
            ControlPacket {
                diag: Diag::DetectionTimeExpired,
                ..pkt(State::Down, frr, 0, 1_000_000, 1_000_000, 50_000)
            },
        ),
    ]
}

#[test]
fn packets_captured_from_bird_and_frr_decode_to_their_values_and_encode_to_their_bytes() {
    for (what, bytes, value) in vectors() {
        let b = hex(bytes);
        assert_eq!(ControlPacket::decode(&b), Ok(value), "{what}");
        assert_eq!(value.encode().to_vec(), b, "{what}");
    }
}

fn valid() -> Vec<u8> {
    hex("20c00318bf4b5c0e9a1b76c1000493e0000493e000000000")
}

fn decode_with(f: impl FnOnce(&mut Vec<u8>)) -> Result<ControlPacket, DecodeError> {
    let mut b = valid();
    f(&mut b);
    ControlPacket::decode(&b)
}

#[test]
fn a_packet_shorter_than_the_header_is_discarded() {
    assert_eq!(
        ControlPacket::decode(&[0x20, 0xc0, 3]),
        Err(DecodeError::Truncated { len: 3 })
    );
}

#[test]
fn a_version_other_than_one_is_discarded() {
    assert_eq!(
        decode_with(|b| b[0] = 0x40),
        Err(DecodeError::BadVersion { version: 2 })
    );
}

#[test]
fn a_length_field_below_24_is_discarded() {
    assert_eq!(
        decode_with(|b| b[3] = 20),
        Err(DecodeError::LengthTooSmall {
            length: 20,
            min: 24
        })
    );
}

#[test]
fn a_length_field_below_26_with_the_a_bit_is_discarded() {
    assert_eq!(
        decode_with(|b| {
            b[1] |= A;
            b[3] = 25;
        }),
        Err(DecodeError::LengthTooSmall {
            length: 25,
            min: 26
        })
    );
}

#[test]
fn a_length_field_beyond_the_payload_is_discarded() {
    assert_eq!(
        decode_with(|b| b[3] = 28),
        Err(DecodeError::LengthExceedsPayload {
            length: 28,
            len: 24
        })
    );
}

#[test]
fn padding_after_the_length_field_is_ignored() {
    let mut b = valid();
    b.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(ControlPacket::decode(&b), ControlPacket::decode(&valid()));
}

#[test]
fn a_zero_detect_multiplier_is_discarded() {
    assert_eq!(decode_with(|b| b[2] = 0), Err(DecodeError::ZeroDetectMult));
}

#[test]
fn the_multipoint_bit_is_discarded() {
    assert_eq!(decode_with(|b| b[1] |= M), Err(DecodeError::Multipoint));
}

#[test]
fn a_zero_my_discriminator_is_discarded() {
    assert_eq!(
        decode_with(|b| b[4..8].fill(0)),
        Err(DecodeError::ZeroMyDiscriminator)
    );
}

#[test]
fn a_zero_your_discriminator_is_discarded_when_the_sender_is_up_or_init() {
    assert_eq!(
        decode_with(|b| b[8..12].fill(0)),
        Err(DecodeError::ZeroYourDiscriminator { state: State::Up })
    );
    assert_eq!(
        decode_with(|b| {
            b[8..12].fill(0);
            b[1] = 0x80;
        }),
        Err(DecodeError::ZeroYourDiscriminator { state: State::Init })
    );
}

#[test]
fn a_zero_your_discriminator_is_fine_when_the_sender_is_down_or_admin_down() {
    for sta in [0x40, 0x00] {
        assert!(
            decode_with(|b| {
                b[8..12].fill(0);
                b[1] = sta;
            })
            .is_ok()
        );
    }
}

#[test]
fn an_authenticated_packet_is_discarded_since_we_use_no_authentication() {
    assert_eq!(
        decode_with(|b| {
            b[1] |= A;
            b[3] = 26;
            b.extend_from_slice(&[1, 2]);
        }),
        Err(DecodeError::Authenticated)
    );
}

#[test]
fn poll_and_final_together_are_discarded() {
    assert_eq!(
        decode_with(|b| b[1] |= P | F),
        Err(DecodeError::PollAndFinal)
    );
}

#[test]
fn reserved_diagnostics_survive_a_round_trip() {
    let p = decode_with(|b| b[0] = 0x20 | 17).unwrap();
    assert_eq!(p.diag, Diag::Reserved(17));
    assert_eq!(p.encode()[0], 0x20 | 17);
}

fn any_packet() -> impl Strategy<Value = ControlPacket> {
    (
        0u8..32,
        0u8..4,
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        1u8..=255,
        1u32..,
        1u32..,
        (any::<u32>(), any::<u32>(), any::<u32>()),
    )
        .prop_map(
            |(diag, sta, (poll, fin, cpi, demand), mult, my, your, (tx, rx, echo))| ControlPacket {
                diag: Diag::from_bits(diag),
                state: State::from_bits(sta),
                poll,
                final_: fin && !poll,
                cpi,
                demand,
                detect_mult: nz8(mult),
                my_disc: nz32(my),
                your_disc: your,
                desired_min_tx: tx,
                required_min_rx: rx,
                required_min_echo_rx: echo,
            },
        )
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = ControlPacket::decode(&bytes);
    }

    #[test]
    fn every_valid_packet_survives_a_round_trip(p in any_packet()) {
        prop_assert_eq!(ControlPacket::decode(&p.encode()), Ok(p));
    }

    #[test]
    fn whatever_decodes_re_encodes_to_the_same_24_bytes(
        b1 in any::<u8>(), mult in any::<u8>(), rest in proptest::collection::vec(any::<u8>(), 20)
    ) {
        let mut bytes = vec![0x20, b1, mult, 24];
        bytes.extend_from_slice(&rest);
        if let Ok(p) = ControlPacket::decode(&bytes) {
            prop_assert_eq!(p.encode().to_vec(), bytes);
        }
    }
}
