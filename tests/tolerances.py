"""Every numerical tolerance of the test suite, with its reason."""

TOL = {
    # Two float64 evaluations of the same algebra in a different operation order:
    # a few ulps times the number of chained steps and the size of the state.
    "fp64_same_math": 1e-10,
    # float32 execution vs the float64 reference for O(1) states over <= 10 steps:
    # each step rounds at ~6e-8 relative; the denoiser and combinations add a few.
    "fp32_vs_fp64": 2e-5,
    # Measured order of convergence vs theory: least-squares slope over a 8x range of
    # nfe still carries pre-asymptotic curvature of order 0.1-0.2.
    "order": 0.3,
    # gradcheck in float64 with central differences (eps 1e-6): truncation ~eps^2 times
    # third derivatives, roundoff ~1e-16 / eps; both below 1e-6 for O(1) outputs.
    "gradcheck_atol": 1e-6,
    "gradcheck_rtol": 1e-4,
    # Our float32 sampler vs diffusers' float32 set_timesteps/step loop on the same UNet,
    # relative to max |x|: diffusers rounds its step coefficients in float32, we compute them
    # in float64 and cast once. Measured <= 4.3e-7, the float32-vs-float64 floor of our own
    # sampler (3.3e-7); 30x below the smallest convention mismatch tried (final time one
    # training step later: 6e-5 relative).
    "fp32_vs_diffusers": 2e-6,
    # Heun on a flow, ours vs diffusers' FlowMatchHeunDiscreteScheduler, both float32 (diffusers upcasts to
    # float32 whatever it is given), relative to max |x|: the correction divides x - D by the stage's t,
    # down to the grid's smallest t (1e-3 at shift 1), so the float32 rounding of x - D (~6e-8 of |x|) is
    # amplified by up to 1 / t = 1000 at the last correction. Measured: 2.5e-5 (and our own float32 vs
    # float64: 5.5e-5, the same floor); 4x that.
    "fp32_flow_heun": 2e-4,
    # One guided evaluation a x + w b eps_c + (1 - w) b eps_u in float32, relative to the sum of
    # the magnitudes of those (cancelling) terms: a few unit roundoffs (6e-8). Measured 1.9e-7.
    "fp32_guided_sum": 1e-6,
    # The fused update vs its torch twin (same fp32 / fp64 accumulation, same term order), in units of
    # eps(storage dtype) times sum_j |C_kj x_j|: each output is rounded once to storage, so the two differ
    # by at most one storage ulp (<= eps |out|) when a last-bit difference of the fp32 sums (GPU FMA
    # contraction vs separate multiply-add: <= N_SRC <= 7 fp32 roundings) straddles a rounding boundary,
    # and the interpreter stores bf16 by truncation instead of round-to-nearest (measured: exactly 1 ulp
    # off on half the elements). fp32 storage: the 7 accumulation roundings themselves. Measured under
    # the interpreter: 0 for fp32 / fp16 / fp64, <= 1 eps for bf16.
    "kernel_vs_twin_eps": 8,
    # A whole low-NFE sample in fp32 / fp16 / bf16 vs the float64 reference, in units of eps(dtype) times
    # max |x0|: the state starts at sigma_max = 80 times z and is cancelled down to O(1), so a rounding
    # of the early registers weighs up to ~100 eps of the result. Measured over every solver config and
    # parameterisation (nfe 5): <= 31 eps (eager, which rounds after every term) and <= 23 eps (fused
    # update, fp32 accumulation); twice the worst.
    "lowp_sample_eps": 64,
    # The exported graph under onnxruntime vs the eager sampler, both float32, as max|diff| / max|ref|
    # (the bound issue 6 sets): the graph applies the folded coefficients (conversion and guidance
    # inside one float64-computed map, cast once) where the eager sampler converts then combines, and
    # onnxruntime fuses and reorders the network's float32 arithmetic. Measured at batch 1 / 3 / 64,
    # nfe 5: <= 5.1e-7 (small conv net, every solver config), 6.3e-7 (DDPM eps UNet), 4.7e-6 (guided
    # TinyUNet, whose EDM state starts at 80 z); 20x margin below the bound.
    "onnx_fp32": 1e-4,
    # One sample computed inside a batch vs alone, both float32, as max|diff| / max|ref| (the Triton model
    # batches the requests of one call): torch's CPU convolutions block and sum differently per batch size,
    # and the EDM state starts at 80 z, so a rounding difference of the first calls weighs up to ~100 ulps of
    # the result. Measured on the built-in digits model (UniPC-3, NFE 4), 20 seeds x batches 1+2, 1+7, 3+5,
    # 1+63: <= 2.2e-6 (lf.sample), 0 (onnxruntime); 20x the worst.
    "batch_fp32": 5e-5,
    # The fp16 graph (network in float16, state and linear maps in float32) vs the float32 eager
    # sampler: float16 rounds weights and activations at 4.9e-4 relative through every layer of every
    # call, and the sample inherits a few of those roundings. Measured at batch 1 / 3 / 64, nfe 5:
    # <= 1.7e-4 (small conv net, every solver config), 2.1e-4 (DDPM eps UNet), 3.2e-3 (guided TinyUNet:
    # more layers, and guidance w = 2 amplifies the cond / uncond difference by 2); 3x the worst.
    "onnx_fp16": 1e-2,
    # Two float32 graphs of the same sampler (torch's trace of the unrolled module vs the assembled
    # graph): the same network and coefficients; only the exporter's operator choices could differ.
    # Measured 0 (bit-identical outputs); the bound allows a reordered sum of a few float32 terms.
    "onnx_twins_fp32": 1e-6,
    # The diffusers scheduler vs lf.sample on the same UNet: the scheduler applies the same float32
    # operations in the same order (a mirror of lf.run_plan), the UNet sees the same times. Measured 0.
    "diffusers_scheduler_fp32": 1e-6,
    # A TensorRT engine (fp32 or fp16 graph) vs the float32 eager sampler on the GPU: TensorRT runs
    # float32 convolutions in TF32 by default on Ampere and later (10-bit mantissa, like fp16), so it is
    # held to the fp16 bound. Not measured yet: the development machine has no GPU / TensorRT.
    "tensorrt_vs_eager": 1e-2,
    # lf.k_sampler in float32 (network, state, sigmas: ComfyUI's call) vs lf.sample in float64: lf.sample's own
    # float32 run is 1.7e-5 away, and k-diffusion's VE form starts at sigma_max z = 157 z, where denoised =
    # x + c_out eps cancels (~157 x 6e-8 = 1e-5 of the first D). Measured <= 1.9e-5.
    "k_sampler_fp32": 1e-4,
    # k-diffusion's get_sigmas_karras vs our "edm" grid: its ramp is float32 raised to rho = 7 (7x its rounding,
    # 6e-8, and up to ~5x more where the ramp cancels toward sigma_min^(1/7)). Measured <= 1.4e-6.
    "karras_fp32_ramp": 4e-6,
    # k-diffusion's discrete wrapper interpolates log sigma over the training index, lf.VPDiscrete log alpha in
    # t: the index differs by <= 3e-3 of a step between grid points, the Euler sample by far less. Measured
    # 1.7e-5 (the lower bound 1e-9 shows the two maps really differ off the grid).
    "k_diffusion_time_map": 1e-4,
    # A pipeline family's own diffusers loop (network, latents and prompt embeddings float64) vs lf.sample in
    # float64, relative to max |x| (tests/test_family_agreement.py, NFE 4 and 8): diffusers still rounds in float32
    # where it holds float32 tables or upcasts (alphas_cumprod; EulerDiscrete's and FlowMatchEuler's sigmas and
    # step; Wan's time embedding takes a float32 time), ~6e-8 per coefficient. Measured <= 3.6e-7 (SD3; SD / SDXL
    # <= 1.6e-7, Flux 1.4e-7, Wan 2.5e-7); the bound asked for, 28x the worst.
    "fp64_vs_diffusers": 1e-5,
}
