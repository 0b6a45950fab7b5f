//! The network between hosts: directed cuts (so partitions can be asymmetric), counted so that
//! overlapping faults heal independently. Loss and delay of messages are drawn by the world.

#[derive(Clone, Debug)]
pub struct Net {
    n: usize,
    /// `cuts[from * n + to]`: how many active faults drop traffic from `from` to `to`.
    cuts: Vec<u32>,
}

impl Net {
    pub fn new(n: usize) -> Self {
        Net { n, cuts: vec![0; n * n] }
    }

    /// Whether a packet from `from` reaches `to` (a host always reaches itself).
    pub fn delivers(&self, from: usize, to: usize) -> bool {
        from == to || self.cuts[from * self.n + to] == 0
    }

    /// Both directions work: what a TCP connection (replication, a Raft round trip) needs.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.delivers(a, b) && self.delivers(b, a)
    }

    /// Drop (`on`) or stop dropping one direction.
    pub fn cut_one_way(&mut self, from: usize, to: usize, on: bool) {
        let c = &mut self.cuts[from * self.n + to];
        *c = if on { *c + 1 } else { c.saturating_sub(1) };
    }

    pub fn cut_pair(&mut self, a: usize, b: usize, on: bool) {
        self.cut_one_way(a, b, on);
        self.cut_one_way(b, a, on);
    }

    /// A host's switch port down (`on`) or up.
    pub fn isolate(&mut self, host: usize, on: bool) {
        for other in (0..self.n).filter(|o| *o != host) {
            self.cut_pair(host, other, on);
        }
    }

    pub fn healed(&self) -> bool {
        self.cuts.iter().all(|c| *c == 0)
    }
}
