//! What the fast paths' differential tests share: a small deterministic generator (xorshift),
//! so a failing case is named by its number and reproducible.

pub(super) struct Rng(pub u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// The first item more often than not (`common` percent of the time), else any: cases stay
    /// mostly plain, with one or two unusual parts each.
    pub(super) fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T], common: u64) -> &'a T {
        if self.chance(common) {
            items[0]
        } else {
            items[(self.next() % items.len() as u64) as usize]
        }
    }
}
