//! Counting: every verdict by hook and reason, and packets decided by a rule.

use gateway_common::{acl::RULE_DEFAULT, stats::stats_index};

use crate::maps;

#[inline(always)]
pub fn count(hook: u32, reason: u32, bytes: u64) {
    if let Some(c) = maps::STATS.get_ptr_mut(stats_index(hook, reason)) {
        // SAFETY: per-CPU slot, no other writer.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_rule(slot: u32, rules_per_slot: u32, rule: u32, bytes: u64) {
    if rule == RULE_DEFAULT || rule >= rules_per_slot {
        return;
    }
    if let Some(c) = maps::RULE_STATS.get_ptr_mut((slot & 1) * rules_per_slot + rule) {
        // SAFETY: per-CPU slot, no other writer.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
