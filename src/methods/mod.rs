//! Calibration-driven quantization methods: what GPTQ and AWQ do with the activations the
//! sequential driver (`calib::sequential`) feeds them, and what they hand to the writers.

pub mod awq;
pub mod gptq;
