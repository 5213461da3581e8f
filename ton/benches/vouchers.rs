//! Vouchers per second in Rust: building and signing (the payer, once per
//! receipt) and verifying (the payee, once per voucher received), next to a
//! bare Ed25519 sign/verify of 32 bytes measured in the same run.

use std::hint::black_box;
use std::time::Instant;

use cocoon_ton::channel::ChannelParams;
use cocoon_ton::{TonAddress, Voucher};
use ed25519_dalek::{Signer, SigningKey, Verifier};

fn per_second(n: u32, mut f: impl FnMut(u32)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

fn main() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let addr = |b: u8| TonAddress::from_hex_str(&format!("0:{}", hex::encode([b; 32]))).unwrap();
    let params = ChannelParams {
        payer: addr(1),
        payee: addr(2),
        payer_key: key.verifying_key().to_bytes(),
        channel_id: 1,
        dispute_window: 86_400,
    };
    let channel = params.address().unwrap();
    let binding = cocoon_ton::channel::ChannelBinding { global_id: -239, instance: 1 };
    let n = 20_000;

    let sign = per_second(n, |i| {
        black_box(Voucher { channel: channel.clone(), binding, total: u64::from(i) + 1 }.sign(&key).unwrap());
    });
    let signed: Vec<_> = (0..n)
        .map(|i| Voucher { channel: channel.clone(), binding, total: u64::from(i) + 1 }.sign(&key).unwrap())
        .collect();
    let verify = per_second(n, |i| {
        black_box(signed[i as usize].verify(&channel, &binding, &params.payer_key).unwrap());
    });
    let msg = [9u8; 32];
    let raw_sign = per_second(n, |_| {
        black_box(key.sign(black_box(&msg)));
    });
    let sig = key.sign(&msg);
    let vk = key.verifying_key();
    let raw_verify = per_second(n, |_| {
        vk.verify(black_box(&msg), &sig).unwrap();
    });

    println!("| vouchers (1 thread) | per second | bare Ed25519 per second | ratio |");
    println!("|---|---:|---:|---:|");
    println!("| build + sign | {sign:.0} | {raw_sign:.0} | {:.2} |", sign / raw_sign);
    println!("| parse + verify | {verify:.0} | {raw_verify:.0} | {:.2} |", verify / raw_verify);
}
