//! A small seeded PRNG (xoshiro256++, seeded through SplitMix64) and the samplers the load
//! shapes need. Written here rather than taken from `rand` so that a seed means the same
//! prompts and the same arrival times in every version of this tool: reproducibility of a
//! load test must not depend on a dependency's algorithm choices.

/// SplitMix64 step: used to expand seeds and to derive independent streams.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++ generator.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        Rng {
            s: [
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
            ],
        }
    }

    /// A generator for item `index` of stream `stream` under `seed`: the same triple always
    /// gives the same numbers, whatever order items are generated in (workers take request
    /// indices in any order).
    pub fn derive(seed: u64, stream: u64, index: u64) -> Self {
        let mut sm = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let a = splitmix64(&mut sm);
        let mut sm2 = a ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Rng::new(splitmix64(&mut sm2))
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[0]
            .wrapping_add(self.s[3])
            .rotate_left(23)
            .wrapping_add(self.s[0]);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1]: safe to take the logarithm of.
    pub fn unit_open(&mut self) -> f64 {
        1.0 - self.unit()
    }

    /// Uniform integer in `0..n` (`n` > 0), without modulo bias worth mentioning (Lemire's
    /// multiply-shift; the bias is below 2^-64 · n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform integer in `lo..=hi`.
    pub fn in_range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// Standard normal (Box–Muller; one of the pair is discarded to keep the state simple).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit_open();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Exponential with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.unit_open().ln()
    }

    /// Gamma with `shape` k > 0 and `scale` θ (mean kθ, coefficient of variation 1/√k),
    /// by Marsaglia and Tsang's method; shapes below 1 use the boost
    /// Gamma(k) = Gamma(k + 1) · U^(1/k).
    pub fn gamma(&mut self, shape: f64, scale: f64) -> f64 {
        if shape < 1.0 {
            let boost = self.unit_open().powf(1.0 / shape);
            return self.gamma(shape + 1.0, scale) * boost;
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = self.unit_open();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v * scale;
            }
        }
    }
}

/// Mean and coefficient of variation of samples (used by tests of the samplers).
#[cfg(test)]
pub(crate) fn mean_and_cv(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt() / mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_streams_differ() {
        let a: Vec<u64> = (0..5).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut x = Rng::derive(1, 2, 3);
        let mut y = Rng::derive(1, 2, 3);
        let mut z = Rng::derive(1, 2, 4);
        let w = Rng::derive(1, 3, 3).next_u64();
        let (xv, yv, zv) = (x.next_u64(), y.next_u64(), z.next_u64());
        assert_eq!(xv, yv);
        assert_ne!(xv, zv);
        assert_ne!(xv, w);
    }

    #[test]
    fn unit_and_range_bounds() {
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            let v = r.in_range(3, 5);
            assert!((3..=5).contains(&v));
        }
        assert_eq!(r.in_range(4, 4), 4);
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut r = Rng::new(2);
        let xs: Vec<f64> = (0..200_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| x * x).sum::<f64>() / xs.len() as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
    }

    #[test]
    fn exponential_mean_and_cv() {
        let mut r = Rng::new(3);
        let xs: Vec<f64> = (0..200_000).map(|_| r.exponential(0.5)).collect();
        let (mean, cv) = mean_and_cv(&xs);
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
        assert!((cv - 1.0).abs() < 0.01, "{cv}");
    }

    #[test]
    fn gamma_mean_and_cv_for_several_shapes() {
        let mut r = Rng::new(4);
        for shape in [0.25, 0.5, 1.0, 2.0, 8.0] {
            let scale = 2.0 / shape; // mean 2
            let xs: Vec<f64> = (0..200_000).map(|_| r.gamma(shape, scale)).collect();
            let (mean, cv) = mean_and_cv(&xs);
            let want_cv = 1.0 / f64::sqrt(shape);
            assert!(
                (mean - 2.0).abs() / 2.0 < 0.02,
                "shape {shape}: mean {mean}"
            );
            assert!(
                (cv - want_cv).abs() / want_cv < 0.03,
                "shape {shape}: cv {cv}, want {want_cv}"
            );
        }
    }
}
