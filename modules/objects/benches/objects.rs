use std::time::Instant;
use zeronode_objects::coding::Coder;

fn main() {
    let coder = Coder::new(4, 2).unwrap();
    let stripe = 4 << 20;
    let payload: Vec<u8> = (0..stripe)
        .map(|i| (i as u32).wrapping_mul(2654435761) as u8 ^ (i >> 13) as u8)
        .collect();
    let rounds = 64;
    let t = Instant::now();
    let mut shards = Vec::new();
    for r in 0..rounds {
        shards = coder.encode(r, &payload).unwrap();
    }
    let e = t.elapsed().as_secs_f64();
    println!(
        "encode {:.0} MB/s",
        (stripe * rounds as usize) as f64 / e / 1e6
    );
    let t = Instant::now();
    for r in 0..rounds {
        let mut p: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
        p[0] = None;
        p[1] = None;
        coder.reconstruct_data(r, &mut p).unwrap();
    }
    let e = t.elapsed().as_secs_f64();
    println!(
        "reconstruct {:.0} MB/s",
        (stripe * rounds as usize) as f64 / e / 1e6
    );
}
