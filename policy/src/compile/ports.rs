//! Port classes: the ports of each protocol cut into intervals at every boundary a rule names.
//! Ports in one interval are matched by exactly the same rules.

use gateway_common::acl::PORTS;

use crate::{PortRange, PortSet};

pub struct PortClasses {
    /// Class of each port.
    pub class_of: Vec<u32>,
    /// First port of each class (its representative).
    pub first_port: Vec<u16>,
}

impl PortClasses {
    pub fn build<'a>(sets: impl Iterator<Item = &'a PortSet>) -> PortClasses {
        let mut cut = vec![false; PORTS as usize + 1];
        cut[0] = true;
        for set in sets {
            if let PortSet::Ranges(ranges) = set {
                for r in ranges {
                    cut[r.start as usize] = true;
                    cut[r.end as usize + 1] = true;
                }
            }
        }
        let mut class_of = vec![0u32; PORTS as usize];
        let mut first_port = Vec::new();
        let mut class = 0u32;
        for port in 0..PORTS as usize {
            if cut[port] {
                if port != 0 {
                    class += 1;
                }
                first_port.push(port as u16);
            }
            class_of[port] = class;
        }
        PortClasses {
            class_of,
            first_port,
        }
    }

    /// The classes a range covers (contiguous, since classes are ordered intervals).
    pub fn classes_in(&self, r: &PortRange) -> std::ops::RangeInclusive<u32> {
        self.class_of[r.start as usize]..=self.class_of[r.end as usize]
    }
}
