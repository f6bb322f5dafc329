// Torch bindings, the one place that registers the native ops (torch.ops.fields.*): every schema, then the CPU
// implementations and, when compiled with FIELDS_WITH_CUDA, the CUDA ones. Each wrapper checks its tensors,
// allocates the outputs and dispatches on the device to the CPU build (fields::cpu, cpu/) or the CUDA build
// (fields::cuda, gpu/). The kernels themselves see only raw pointers and sizes (common/kernels.h), except the fused
// MLP, which manages its own tensors (cpu/mlp.h).
#include <torch/library.h>
#include <ATen/ATen.h>

#ifdef FIELDS_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include <tuple>
#include <vector>

#include "common/kernels.h"
#include "cpu/mlp.h"

namespace {

using at::Tensor;

// Calls fields::cpu::NAME(args...) or fields::cuda::NAME(args..., stream) depending on `device`.
#ifdef FIELDS_WITH_CUDA
#define DISPATCH(device, NAME, ...)                                                                  \
  do {                                                                                               \
    if ((device).is_cuda()) {                                                                        \
      fields::cuda::NAME(__VA_ARGS__, static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream())); \
    } else {                                                                                         \
      fields::cpu::NAME(__VA_ARGS__);                                                                \
    }                                                                                                \
  } while (0)
#else
#define DISPATCH(device, NAME, ...)                                                          \
  do {                                                                                       \
    TORCH_CHECK(!(device).is_cuda(), "fields native ops were built without CUDA support");   \
    fields::cpu::NAME(__VA_ARGS__);                                                          \
  } while (0)
#endif

Tensor f32(const Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  return t.contiguous();
}

const float* fptr(const Tensor& t) { return t.numel() ? t.data_ptr<float>() : nullptr; }
float* mptr(Tensor& t) { return t.numel() ? t.data_ptr<float>() : nullptr; }

fields::HashGrid hash_grid(const Tensor& table, const Tensor& res32) {
  TORCH_CHECK(table.dim() == 3, "table must be [L, T, F]");
  const int64_t t = table.size(1);
  TORCH_CHECK(t > 0 && (t & (t - 1)) == 0, "hash table size must be a power of two, got ", t);
  TORCH_CHECK(res32.numel() == table.size(0), "one resolution per level expected");
  return {table.data_ptr<float>(), res32.data_ptr<int32_t>(), static_cast<int>(table.size(0)), t,
          static_cast<int>(table.size(2))};
}

Tensor hash_encode_fwd(const Tensor& x_, const Tensor& table_, const Tensor& resolutions) {
  Tensor x = f32(x_, "x"), table = f32(table_, "table");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3, "x must be [N, 3]");
  TORCH_CHECK(x.device() == table.device(), "x and table must be on the same device");
  Tensor res = resolutions.to(x.device(), at::kInt).contiguous();
  Tensor out = at::empty({x.size(0), table.size(0) * table.size(2)}, x.options());
  if (x.size(0) == 0) return out;
  DISPATCH(x.device(), hash_encode_forward, x.data_ptr<float>(), x.size(0), hash_grid(table, res),
           out.data_ptr<float>());
  return out;
}

std::tuple<Tensor, Tensor> hash_encode_bwd(const Tensor& grad_out_, const Tensor& x_, const Tensor& table_,
                                           const Tensor& resolutions, bool need_x_grad) {
  Tensor g = f32(grad_out_, "grad_out"), x = f32(x_, "x"), table = f32(table_, "table");
  Tensor res = resolutions.to(x.device(), at::kInt).contiguous();
  Tensor grad_x = need_x_grad ? at::zeros_like(x) : at::empty({0}, x.options());
  if (x.size(0) == 0) return {at::zeros_like(table), grad_x};
  Tensor grad_table = at::empty_like(table);  // the kernels zero it
  DISPATCH(x.device(), hash_encode_backward, g.data_ptr<float>(), x.data_ptr<float>(), x.size(0),
           hash_grid(table, res), grad_table.data_ptr<float>(), need_x_grad ? grad_x.data_ptr<float>() : nullptr);
  return {grad_table, grad_x};
}

std::tuple<Tensor, Tensor, Tensor> march_rays(const Tensor& origins_, const Tensor& dirs_, const Tensor& binary_,
                                              const Tensor& aabb_, double step_size, double near, double far,
                                              double cone_angle, double max_step,
                                              const c10::optional<Tensor>& jitter_, bool contract, int64_t n_outer) {
  Tensor origins = f32(origins_, "origins"), dirs = f32(dirs_, "dirs");
  TORCH_CHECK(origins.dim() == 2 && origins.size(1) == 3 && dirs.sizes() == origins.sizes(),
              "origins and dirs must be [R, 3]");
  TORCH_CHECK(binary_.dim() == 3, "binary must be [X, Y, Z]");
  TORCH_CHECK(step_size > 0, "step_size must be positive");
  Tensor binary = binary_.to(origins.device(), at::kByte).contiguous();
  Tensor aabb = aabb_.to(at::kCPU, at::kFloat).contiguous().reshape({6});
  Tensor jitter;
  if (jitter_.has_value()) jitter = f32(*jitter_, "jitter");
  fields::MarchParams p{};
  for (int a = 0; a < 3; ++a) {
    p.lo[a] = aabb[a].item<float>();
    p.hi[a] = aabb[3 + a].item<float>();
    p.res[a] = static_cast<int>(binary.size(a));
  }
  p.step = step_size;
  p.near = near;
  p.far = far;
  p.cone = cone_angle;
  p.max_step = max_step;
  TORCH_CHECK(!contract || n_outer >= 2, "contracted marching needs n_outer >= 2");
  p.contract = contract ? 1 : 0;
  p.n_outer = contract ? n_outer : 0;
  const int64_t n = origins.size(0);
  Tensor ray_indices, t_starts, t_ends;
  const fields::AllocateSamples allocate = [&](int64_t count) {
    ray_indices = at::empty({count}, origins.options().dtype(at::kLong));
    t_starts = at::empty({count}, origins.options());
    t_ends = at::empty({count}, origins.options());
    return fields::PackedSamples{count ? ray_indices.data_ptr<int64_t>() : nullptr, mptr(t_starts), mptr(t_ends)};
  };
  DISPATCH(origins.device(), march_rays, origins.data_ptr<float>(), dirs.data_ptr<float>(),
           jitter.defined() ? jitter.data_ptr<float>() : nullptr, n, binary.data_ptr<uint8_t>(), p, allocate);
  return {ray_indices, t_starts, t_ends};
}

Tensor check_offsets(const Tensor& offsets, const Tensor& like) {
  TORCH_CHECK(offsets.scalar_type() == at::kLong && offsets.dim() == 1 && offsets.numel() >= 1,
              "offsets must be int64 [n_rays + 1]");
  TORCH_CHECK(offsets.device() == like.device(), "offsets must be on the samples' device");
  return offsets.contiguous();
}

Tensor transmittance(const Tensor& tau_, const Tensor& offsets_) {
  Tensor tau = f32(tau_, "tau"), offsets = check_offsets(offsets_, tau_);
  Tensor out = at::empty_like(tau);
  const int64_t n_rays = offsets.numel() - 1;
  if (tau.numel() > 0 && n_rays > 0)
    DISPATCH(tau.device(), transmittance, tau.data_ptr<float>(), offsets.data_ptr<int64_t>(), n_rays,
             out.data_ptr<float>());
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> composite_fwd(const Tensor& sigmas_, const Tensor& rgbs_,
                                                         const Tensor& t_starts_, const Tensor& t_ends_,
                                                         const Tensor& offsets_) {
  Tensor sigmas = f32(sigmas_, "sigmas"), rgbs = f32(rgbs_, "rgbs");
  Tensor t_starts = f32(t_starts_, "t_starts"), t_ends = f32(t_ends_, "t_ends");
  Tensor offsets = check_offsets(offsets_, sigmas_);
  TORCH_CHECK(rgbs.dim() == 2 && rgbs.size(1) == 3 && rgbs.size(0) == sigmas.numel(), "rgbs must be [S, 3]");
  const int64_t n_rays = offsets.numel() - 1;
  Tensor weights = at::empty_like(sigmas);
  Tensor rgb = at::zeros({n_rays, 3}, sigmas.options()), opacity = at::zeros({n_rays}, sigmas.options());
  Tensor depth = at::zeros({n_rays}, sigmas.options());
  if (n_rays > 0 && sigmas.numel() > 0)
    DISPATCH(sigmas.device(), composite_forward, sigmas.data_ptr<float>(), rgbs.data_ptr<float>(),
             t_starts.data_ptr<float>(), t_ends.data_ptr<float>(), offsets.data_ptr<int64_t>(), n_rays,
             weights.data_ptr<float>(), rgb.data_ptr<float>(), opacity.data_ptr<float>(), depth.data_ptr<float>());
  return {weights, rgb, opacity, depth};
}

std::tuple<Tensor, Tensor> composite_bwd(const c10::optional<Tensor>& grad_weights_, const Tensor& grad_rgb_,
                                         const Tensor& grad_opacity_, const Tensor& grad_depth_,
                                         const Tensor& sigmas_, const Tensor& rgbs_, const Tensor& t_starts_,
                                         const Tensor& t_ends_, const Tensor& offsets_) {
  Tensor sigmas = f32(sigmas_, "sigmas"), rgbs = f32(rgbs_, "rgbs");
  Tensor t_starts = f32(t_starts_, "t_starts"), t_ends = f32(t_ends_, "t_ends");
  Tensor grad_rgb = f32(grad_rgb_, "grad_rgb"), grad_opacity = f32(grad_opacity_, "grad_opacity");
  Tensor grad_depth = f32(grad_depth_, "grad_depth"), offsets = check_offsets(offsets_, sigmas_);
  Tensor grad_weights;
  if (grad_weights_.has_value()) grad_weights = f32(*grad_weights_, "grad_weights");
  const int64_t n_rays = offsets.numel() - 1;
  Tensor grad_sigmas = at::zeros_like(sigmas), grad_rgbs = at::zeros_like(rgbs);
  if (n_rays > 0 && sigmas.numel() > 0)
    DISPATCH(sigmas.device(), composite_backward, grad_weights.defined() ? grad_weights.data_ptr<float>() : nullptr,
             grad_rgb.data_ptr<float>(), grad_opacity.data_ptr<float>(), grad_depth.data_ptr<float>(),
             sigmas.data_ptr<float>(), rgbs.data_ptr<float>(), t_starts.data_ptr<float>(), t_ends.data_ptr<float>(),
             offsets.data_ptr<int64_t>(), n_rays, grad_sigmas.data_ptr<float>(), grad_rgbs.data_ptr<float>());
  return {grad_sigmas, grad_rgbs};
}

// The per-ray state a front-to-back round updates in place: contiguous, on the samples' device, one entry a ray.
Tensor& round_state(Tensor& t, at::ScalarType type, const char* name, const Tensor& like, int64_t n_rays) {
  TORCH_CHECK(t.scalar_type() == type && t.dim() == 1 && t.is_contiguous(), name, " must be a contiguous ",
              type, " vector");
  TORCH_CHECK(t.device() == like.device() && t.numel() == n_rays, name, " must hold one entry per ray");
  return t;
}

std::tuple<Tensor, Tensor> composite_round(const Tensor& sigmas_, const Tensor& t_starts_, const Tensor& t_ends_,
                                           const Tensor& offsets_, const Tensor& rays_, Tensor& optical,
                                           Tensor& opacity, Tensor& depth, double stop_eps, double alpha_thre,
                                           double weight_thre) {
  Tensor sigmas = f32(sigmas_, "sigmas"), t_starts = f32(t_starts_, "t_starts"), t_ends = f32(t_ends_, "t_ends");
  Tensor offsets = check_offsets(offsets_, sigmas_);
  TORCH_CHECK(rays_.scalar_type() == at::kLong && rays_.numel() == offsets.numel() - 1 &&
                  rays_.device() == sigmas_.device(), "rays must be int64 [n_live] on the samples' device");
  Tensor rays = rays_.contiguous();
  const int64_t n_rays = optical.numel();
  round_state(optical, at::kDouble, "optical", sigmas_, n_rays);
  round_state(opacity, at::kFloat, "opacity", sigmas_, n_rays);
  round_state(depth, at::kFloat, "depth", sigmas_, n_rays);
  Tensor weights = at::empty_like(sigmas), keep = at::empty(sigmas.sizes(), sigmas.options().dtype(at::kBool));
  const fields::RoundPruning prune{static_cast<float>(stop_eps), static_cast<float>(alpha_thre),
                                   static_cast<float>(weight_thre)};
  if (rays.numel() > 0 && sigmas.numel() > 0)
    DISPATCH(sigmas.device(), composite_round, sigmas.data_ptr<float>(), t_starts.data_ptr<float>(),
             t_ends.data_ptr<float>(), offsets.data_ptr<int64_t>(), rays.data_ptr<int64_t>(), rays.numel(), prune,
             optical.data_ptr<double>(), opacity.data_ptr<float>(), depth.data_ptr<float>(),
             weights.data_ptr<float>(), reinterpret_cast<uint8_t*>(keep.data_ptr<bool>()));
  return {weights, keep};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> round_samples(
    const Tensor& ray_indices_, const Tensor& t_starts_, const Tensor& t_ends_, const Tensor& origins_,
    const Tensor& dirs_, const Tensor& first_, const Tensor& offsets_) {
  Tensor t_starts = f32(t_starts_, "t_starts"), t_ends = f32(t_ends_, "t_ends");
  Tensor origins = f32(origins_, "origins"), dirs = f32(dirs_, "dirs");
  TORCH_CHECK(origins.dim() == 2 && origins.size(1) == 3 && dirs.sizes() == origins.sizes(),
              "round_samples: origins and dirs must be [R, 3]");
  TORCH_CHECK(ray_indices_.scalar_type() == at::kLong && first_.scalar_type() == at::kLong &&
                  offsets_.scalar_type() == at::kLong && first_.numel() + 1 == offsets_.numel(),
              "round_samples: ray_indices, first [L] and offsets [L + 1] must be int64");
  for (const Tensor* t : {&ray_indices_, &first_, &offsets_, &origins_, &dirs_})
    TORCH_CHECK(t->device() == t_starts_.device(), "round_samples: every tensor on the samples' device");
  Tensor ray_indices = ray_indices_.contiguous(), first = first_.contiguous(), offsets = offsets_.contiguous();
  const int64_t n = offsets.numel() > 1 ? offsets[-1].item<int64_t>() : 0;
  const auto longs = ray_indices.options();
  Tensor idx = at::empty({n}, longs), ray = at::empty({n}, longs);
  Tensor ts = at::empty({n}, t_starts.options()), te = at::empty({n}, t_starts.options());
  Tensor x = at::empty({n, 3}, origins.options()), d = at::empty({n, 3}, origins.options());
  if (n > 0)
    DISPATCH(t_starts.device(), round_samples, ray_indices.data_ptr<int64_t>(), t_starts.data_ptr<float>(),
             t_ends.data_ptr<float>(), origins.data_ptr<float>(), dirs.data_ptr<float>(), first.data_ptr<int64_t>(),
             offsets.data_ptr<int64_t>(), first.numel(), idx.data_ptr<int64_t>(), ray.data_ptr<int64_t>(),
             ts.data_ptr<float>(), te.data_ptr<float>(), x.data_ptr<float>(), d.data_ptr<float>());
  return {idx, ray, ts, te, x, d};
}

// -- Gaussian splatting ----------------------------------------------------------------------------------

// The camera struct from an OpenCV world-to-camera [3, 4] matrix and intrinsics; the Jacobian's limits are
// computed in double like the reference's Python floats, then rounded to float32.
fields::SplatCamera splat_camera(const Tensor& viewmat, double fx, double fy, double cx, double cy, int64_t width,
                                 int64_t height, double near) {
  Tensor vm = viewmat.to(at::kCPU, at::kFloat).contiguous();
  TORCH_CHECK(vm.dim() == 2 && vm.size(0) == 3 && vm.size(1) == 4, "viewmat must be [3, 4]");
  const float* v = vm.data_ptr<float>();
  fields::SplatCamera cam;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) cam.R[3 * i + j] = v[4 * i + j];
    cam.t[i] = v[4 * i + 3];
  }
  cam.fx = static_cast<float>(fx);
  cam.fy = static_cast<float>(fy);
  cam.cx = static_cast<float>(cx);
  cam.cy = static_cast<float>(cy);
  cam.lim_xp = static_cast<float>(1.3 * (static_cast<double>(width) - cx) / fx);
  cam.lim_xn = static_cast<float>(1.3 * cx / fx);
  cam.lim_yp = static_cast<float>(1.3 * (static_cast<double>(height) - cy) / fy);
  cam.lim_yn = static_cast<float>(1.3 * cy / fy);
  cam.near = static_cast<float>(near);
  cam.width = static_cast<int>(width);
  cam.height = static_cast<int>(height);
  return cam;
}

fields::SplatTiles splat_tiles(int64_t width, int64_t height, int64_t tile) {
  TORCH_CHECK(width > 0 && height > 0, "image size must be positive");
  TORCH_CHECK(tile >= 1 && tile <= 32, "tile_size must be in [1, 32]");
  TORCH_CHECK((width + tile - 1) / tile < 65536 && (height + tile - 1) / tile < 65536, "too many tiles per side");
  const int w = static_cast<int>(width), h = static_cast<int>(height), t = static_cast<int>(tile);
  return {w, h, t, (w + t - 1) / t, (h + t - 1) / t};
}

void check_rows(const Tensor& t, int64_t n, int64_t cols, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == cols, name, " must be [N, ", cols, "]");
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> splat_project_fwd(const Tensor& means_, const Tensor& quats_,
                                                                     const Tensor& scales_, const Tensor& viewmat,
                                                                     double fx, double fy, double cx, double cy,
                                                                     int64_t width, int64_t height, double near) {
  Tensor means = f32(means_, "means"), quats = f32(quats_, "quats"), scales = f32(scales_, "scales");
  const int64_t n = means.size(0);
  check_rows(means, n, 3, "means");
  check_rows(quats, n, 4, "quats");
  check_rows(scales, n, 3, "scales");
  Tensor means2d = at::empty({n, 2}, means.options()), conics = at::empty({n, 3}, means.options());
  Tensor depths = at::empty({n}, means.options()), radii = at::empty({n}, means.options().dtype(at::kInt));
  Tensor compensations = at::empty({n}, means.options());
  if (n > 0)
    DISPATCH(means.device(), splat_project_forward, means.data_ptr<float>(), quats.data_ptr<float>(),
             scales.data_ptr<float>(), n, splat_camera(viewmat, fx, fy, cx, cy, width, height, near),
             means2d.data_ptr<float>(), conics.data_ptr<float>(), depths.data_ptr<float>(), radii.data_ptr<int32_t>(),
             compensations.data_ptr<float>());
  return {means2d, conics, depths, radii, compensations};
}

// The gradients of means, quats and scales and, with viewmat_grad, the view matrix's [3, 4] (on the Gaussians'
// device; summed over the Gaussians in float64), else an empty tensor in its place.
std::tuple<Tensor, Tensor, Tensor, Tensor> splat_project_bwd(const Tensor& v_means2d_, const Tensor& v_conics_,
                                                             const Tensor& v_depths_, const Tensor& v_compensations_,
                                                             const Tensor& means_, const Tensor& quats_,
                                                             const Tensor& scales_, const Tensor& viewmat, double fx,
                                                             double fy, double cx, double cy, int64_t width,
                                                             int64_t height, double near, bool viewmat_grad) {
  Tensor means = f32(means_, "means"), quats = f32(quats_, "quats"), scales = f32(scales_, "scales");
  Tensor v_means2d = f32(v_means2d_, "v_means2d"), v_conics = f32(v_conics_, "v_conics");
  Tensor v_depths = f32(v_depths_, "v_depths"), v_compensations = f32(v_compensations_, "v_compensations");
  const int64_t n = means.size(0);
  Tensor v_means = at::zeros_like(means), v_quats = at::zeros_like(quats), v_scales = at::zeros_like(scales);
  Tensor v_viewmats = at::empty({viewmat_grad ? n : 0, 12}, means.options());  // every row is written
  if (n > 0)
    DISPATCH(means.device(), splat_project_backward, means.data_ptr<float>(), quats.data_ptr<float>(),
             scales.data_ptr<float>(), n, splat_camera(viewmat, fx, fy, cx, cy, width, height, near),
             v_means2d.data_ptr<float>(), v_conics.data_ptr<float>(), v_depths.data_ptr<float>(),
             v_compensations.data_ptr<float>(), v_means.data_ptr<float>(), v_quats.data_ptr<float>(),
             v_scales.data_ptr<float>(), viewmat_grad ? v_viewmats.data_ptr<float>() : nullptr);
  Tensor v_viewmat = viewmat_grad ? v_viewmats.sum(0, false, at::kDouble).to(at::kFloat).view({3, 4}) : v_viewmats;
  return {v_means, v_quats, v_scales, v_viewmat};
}

std::tuple<Tensor, Tensor> splat_bin(const Tensor& means2d_, const Tensor& conics_, const Tensor& opacities_,
                                     const Tensor& radii_, const Tensor& depths_, int64_t width, int64_t height,
                                     int64_t tile_size) {
  Tensor means2d = f32(means2d_, "means2d"), conics = f32(conics_, "conics"), depths = f32(depths_, "depths");
  Tensor opacities = f32(opacities_, "opacities");
  Tensor radii = radii_.to(at::kInt).contiguous();
  const int64_t n = means2d.size(0);
  check_rows(means2d, n, 2, "means2d");
  check_rows(conics, n, 3, "conics");
  TORCH_CHECK(radii.numel() == n && depths.numel() == n && opacities.numel() == n,
              "radii, depths and opacities must be [N]");
  const fields::SplatTiles g = splat_tiles(width, height, tile_size);
  const int64_t n_tiles = static_cast<int64_t>(g.grid_w) * g.grid_h;
  Tensor counts = at::zeros({n}, means2d.options().dtype(at::kLong));
  if (n > 0)
    DISPATCH(means2d.device(), splat_tile_counts, means2d.data_ptr<float>(), conics.data_ptr<float>(),
             opacities.data_ptr<float>(), radii.data_ptr<int32_t>(), n, g, counts.data_ptr<int64_t>());
  Tensor incl = counts.cumsum(0);
  const int64_t m = n > 0 ? incl[n - 1].item<int64_t>() : 0;
  TORCH_CHECK(m < (int64_t(1) << 31), "too many (tile, Gaussian) pairs: ", m);
  Tensor gauss_offsets = incl - counts;
  Tensor ids = at::empty({m}, means2d.options().dtype(at::kInt));
  Tensor tile_offsets = at::zeros({n_tiles + 1}, means2d.options().dtype(at::kLong));
  if (m > 0)
    DISPATCH(means2d.device(), splat_tile_bin, means2d.data_ptr<float>(), conics.data_ptr<float>(),
             opacities.data_ptr<float>(), radii.data_ptr<int32_t>(), depths.data_ptr<float>(), n, g,
             gauss_offsets.data_ptr<int64_t>(), m, ids.data_ptr<int32_t>(), tile_offsets.data_ptr<int64_t>());
  return {ids, tile_offsets};
}

void check_raster_inputs(const Tensor& means2d, const Tensor& conics, const Tensor& colors, const Tensor& opacities,
                         const Tensor& ids, const Tensor& tile_offsets, const fields::SplatTiles& g) {
  const int64_t n = means2d.size(0);
  check_rows(means2d, n, 2, "means2d");
  check_rows(conics, n, 3, "conics");
  TORCH_CHECK(colors.dim() == 2 && colors.size(0) == n, "colors must be [N, C]");
  TORCH_CHECK(opacities.numel() == n, "opacities must be [N]");
  TORCH_CHECK(ids.scalar_type() == at::kInt, "ids must be int32");
  TORCH_CHECK(tile_offsets.scalar_type() == at::kLong &&
                  tile_offsets.numel() == static_cast<int64_t>(g.grid_w) * g.grid_h + 1,
              "tile_offsets must be int64 [tiles + 1]");
}

std::tuple<Tensor, Tensor, Tensor, Tensor> splat_rasterize_fwd(const Tensor& means2d_, const Tensor& conics_,
                                                               const Tensor& colors_, const Tensor& opacities_,
                                                               const Tensor& ids_, const Tensor& tile_offsets_,
                                                               int64_t width, int64_t height, int64_t tile_size) {
  Tensor means2d = f32(means2d_, "means2d"), conics = f32(conics_, "conics"), colors = f32(colors_, "colors");
  Tensor opacities = f32(opacities_, "opacities"), ids = ids_.contiguous(), tile_offsets = tile_offsets_.contiguous();
  const fields::SplatTiles g = splat_tiles(width, height, tile_size);
  check_raster_inputs(means2d, conics, colors, opacities, ids, tile_offsets, g);
  const int64_t C = colors.size(1);
  Tensor image = at::empty({height, width, C}, means2d.options());
  Tensor alpha = at::empty({height, width}, means2d.options());
  Tensor final_T = at::empty({height, width}, means2d.options());
  Tensor last = at::empty({height, width}, means2d.options().dtype(at::kInt));
  DISPATCH(means2d.device(), splat_rasterize_forward, fptr(means2d), fptr(conics), fptr(colors), fptr(opacities),
           static_cast<int>(C), ids.numel() ? ids.data_ptr<int32_t>() : nullptr, tile_offsets.data_ptr<int64_t>(), g,
           image.data_ptr<float>(), alpha.data_ptr<float>(), final_T.data_ptr<float>(), last.data_ptr<int32_t>());
  return {image, alpha, final_T, last};
}

std::tuple<Tensor, Tensor> splat_rasterize_render(const Tensor& means2d_, const Tensor& conics_, const Tensor& colors_,
                                                  const Tensor& opacities_, const Tensor& ids_,
                                                  const Tensor& tile_offsets_, const Tensor& background_,
                                                  int64_t width, int64_t height, int64_t tile_size) {
  Tensor means2d = f32(means2d_, "means2d"), conics = f32(conics_, "conics"), colors = f32(colors_, "colors");
  Tensor opacities = f32(opacities_, "opacities"), ids = ids_.contiguous(), tile_offsets = tile_offsets_.contiguous();
  Tensor background = f32(background_, "background");
  const fields::SplatTiles g = splat_tiles(width, height, tile_size);
  check_raster_inputs(means2d, conics, colors, opacities, ids, tile_offsets, g);
  const int64_t C = colors.size(1);
  TORCH_CHECK(background.dim() == 1 && background.size(0) <= C, "background must be [B] with B <= C");
  TORCH_CHECK(background.device() == means2d.device(), "background must be on the Gaussians' device");
  Tensor image = at::empty({height, width, C}, means2d.options());
  Tensor alpha = at::empty({height, width}, means2d.options());
  DISPATCH(means2d.device(), splat_rasterize_render, fptr(means2d), fptr(conics), fptr(colors), fptr(opacities),
           static_cast<int>(C), ids.numel() ? ids.data_ptr<int32_t>() : nullptr, tile_offsets.data_ptr<int64_t>(), g,
           fptr(background), static_cast<int>(background.size(0)), image.data_ptr<float>(), alpha.data_ptr<float>());
  return {image, alpha};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> splat_rasterize_bwd(
    const Tensor& v_image_, const Tensor& v_alpha_, const Tensor& means2d_, const Tensor& conics_,
    const Tensor& colors_, const Tensor& opacities_, const Tensor& ids_, const Tensor& tile_offsets_,
    const Tensor& final_T_, const Tensor& last_, int64_t width, int64_t height, int64_t tile_size) {
  Tensor means2d = f32(means2d_, "means2d"), conics = f32(conics_, "conics"), colors = f32(colors_, "colors");
  Tensor opacities = f32(opacities_, "opacities"), ids = ids_.contiguous(), tile_offsets = tile_offsets_.contiguous();
  Tensor v_image = f32(v_image_, "v_image"), v_alpha = f32(v_alpha_, "v_alpha"), final_T = f32(final_T_, "final_T");
  Tensor last = last_.contiguous();
  const fields::SplatTiles g = splat_tiles(width, height, tile_size);
  check_raster_inputs(means2d, conics, colors, opacities, ids, tile_offsets, g);
  TORCH_CHECK(v_image.sizes() == at::IntArrayRef({height, width, colors.size(1)}), "v_image must be [H, W, C]");
  Tensor v_means2d = at::zeros_like(means2d), v_conics = at::zeros_like(conics), v_colors = at::zeros_like(colors);
  Tensor v_opacities = at::zeros_like(opacities);
  DISPATCH(means2d.device(), splat_rasterize_backward, fptr(means2d), fptr(conics), fptr(colors), fptr(opacities),
           static_cast<int>(colors.size(1)), ids.numel() ? ids.data_ptr<int32_t>() : nullptr,
           tile_offsets.data_ptr<int64_t>(), g, final_T.data_ptr<float>(), last.data_ptr<int32_t>(),
           v_image.data_ptr<float>(), v_alpha.data_ptr<float>(), mptr(v_means2d), mptr(v_conics), mptr(v_colors),
           mptr(v_opacities));
  return {v_means2d, v_conics, v_colors, v_opacities};
}

// -- spherical harmonics ---------------------------------------------------------------------------------

// Checks the inputs of sh_color: dirs [N, 3], sh0 [N, 1, 3], shN [N, M, 3] with M >= bands^2 - 1, one device.
void check_sh_color(const Tensor& dirs, const Tensor& sh0, const Tensor& shN, int64_t bands) {
  TORCH_CHECK(bands >= 1 && bands <= 4, "sh_color: bands must be 1..4, got ", bands);
  TORCH_CHECK(dirs.dim() == 2 && dirs.size(1) == 3, "sh_color: dirs must be [N, 3]");
  const int64_t n = dirs.size(0);
  TORCH_CHECK(sh0.dim() == 3 && sh0.size(0) == n && sh0.size(1) == 1 && sh0.size(2) == 3,
              "sh_color: sh0 must be [N, 1, 3]");
  TORCH_CHECK(shN.dim() == 3 && shN.size(0) == n && shN.size(2) == 3 && shN.size(1) >= bands * bands - 1,
              "sh_color: shN must be [N, M, 3] with M >= bands^2 - 1");
  TORCH_CHECK(sh0.device() == dirs.device() && shN.device() == dirs.device(), "sh_color: tensors on one device");
}

Tensor sh_color_fwd(const Tensor& dirs_, const Tensor& sh0_, const Tensor& shN_, int64_t bands) {
  Tensor dirs = f32(dirs_, "dirs"), sh0 = f32(sh0_, "sh0"), shN = f32(shN_, "shN");
  check_sh_color(dirs, sh0, shN, bands);
  Tensor rgb = at::empty({dirs.size(0), 3}, dirs.options());
  if (dirs.size(0) > 0)
    DISPATCH(dirs.device(), sh_color_forward, fptr(dirs), fptr(sh0), fptr(shN), dirs.size(0),
             static_cast<int>(shN.size(1)), static_cast<int>(bands), mptr(rgb));
  return rgb;
}

std::tuple<Tensor, Tensor, Tensor> sh_color_bwd(const Tensor& v_rgb_, const Tensor& dirs_, const Tensor& sh0_,
                                                const Tensor& shN_, int64_t bands) {
  Tensor dirs = f32(dirs_, "dirs"), sh0 = f32(sh0_, "sh0"), shN = f32(shN_, "shN"), v_rgb = f32(v_rgb_, "v_rgb");
  check_sh_color(dirs, sh0, shN, bands);
  TORCH_CHECK(v_rgb.sizes() == dirs.sizes(), "sh_color: v_rgb must be [N, 3]");
  Tensor v_dirs = at::empty_like(dirs), v_sh0 = at::empty_like(sh0), v_shN = at::empty_like(shN);
  if (dirs.size(0) > 0)
    DISPATCH(dirs.device(), sh_color_backward, fptr(dirs), fptr(sh0), fptr(shN), fptr(v_rgb), dirs.size(0),
             static_cast<int>(shN.size(1)), static_cast<int>(bands), mptr(v_dirs), mptr(v_sh0), mptr(v_shN));
  return {v_dirs, v_sh0, v_shN};
}

// -- CPU-only ops (CUDA tensors take the plain-PyTorch path) -----------------------------------------------

std::tuple<Tensor, Tensor> contract_unit(const Tensor& x_, const Tensor& aabb_) {
  TORCH_CHECK(x_.device().is_cpu() && x_.dim() == 2 && x_.size(1) == 3, "contract_unit: x must be CPU [N, 3]");
  Tensor x = f32(x_, "x"), aabb = f32(aabb_, "aabb").cpu();
  TORCH_CHECK(aabb.numel() == 6, "contract_unit: aabb must be [2, 3]");
  Tensor out = at::empty_like(x), scale = at::empty({x.size(0)}, x.options());
  const float* box = aabb.data_ptr<float>();
  if (x.size(0) > 0) fields::cpu::contract_unit(x.data_ptr<float>(), x.size(0), box, box + 3, mptr(out), mptr(scale));
  return {out, scale};
}

Tensor sh_encode(const Tensor& d_, int64_t degree) {
  TORCH_CHECK(d_.device().is_cpu() && d_.scalar_type() == at::kFloat && d_.dim() == 2 && d_.size(1) == 3,
              "sh_encode: directions must be float32 CPU [N, 3]");
  TORCH_CHECK(degree >= 1 && degree <= 4, "sh_encode: degree must be 1..4, got ", degree);
  const Tensor d = d_.contiguous();
  Tensor out = at::empty({d.size(0), degree * degree}, d.options());
  if (d.size(0) > 0) fields::cpu::sh_encode(d.data_ptr<float>(), d.size(0), static_cast<int>(degree), mptr(out));
  return out;
}

// Checks SSIM's images x, y [H, W, C] (CPU, float32, same shape) against its window k [ks] (odd, H, W > ks / 2).
void check_ssim(const Tensor& x, const Tensor& y, const Tensor& k) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.sizes() == y.sizes(), "ssim: x, y must be CPU [H, W, C]");
  TORCH_CHECK(k.dim() == 1 && k.size(0) % 2 == 1, "ssim: the window must be 1-D of odd size");
  TORCH_CHECK(x.size(0) > k.size(0) / 2 && x.size(1) > k.size(0) / 2, "ssim: image smaller than half the window");
}

std::tuple<Tensor, Tensor> ssim_fwd(const Tensor& x_, const Tensor& y_, const Tensor& k_, double c1, double c2,
                                    double eps) {
  Tensor x = f32(x_, "x"), y = f32(y_, "y"), k = f32(k_, "window");
  check_ssim(x, y, k);
  const int64_t h = x.size(0), w = x.size(1), c = x.size(2);
  Tensor map = at::empty({h, w}, x.options()), partials = at::empty({3, c, h, w}, x.options());
  fields::cpu::ssim_forward(fptr(x), fptr(y), h, w, static_cast<int>(c), fptr(k), static_cast<int>(k.size(0)),
                            static_cast<float>(c1), static_cast<float>(c2), static_cast<float>(eps), mptr(map),
                            mptr(partials));
  return {map, partials};
}

Tensor ssim_bwd(const Tensor& v_map_, const Tensor& x_, const Tensor& y_, const Tensor& k_, const Tensor& partials_) {
  Tensor x = f32(x_, "x"), y = f32(y_, "y"), k = f32(k_, "window"), v_map = f32(v_map_, "v_map");
  Tensor partials = f32(partials_, "partials");
  check_ssim(x, y, k);
  const int64_t h = x.size(0), w = x.size(1), c = x.size(2);
  TORCH_CHECK(v_map.sizes() == at::IntArrayRef({h, w}) && partials.sizes() == at::IntArrayRef({3, c, h, w}),
              "ssim: v_map must be [H, W] and partials [3, C, H, W]");
  Tensor v_x = at::empty_like(x);
  fields::cpu::ssim_backward(fptr(v_map), fptr(x), fptr(y), h, w, static_cast<int>(c), fptr(k),
                             static_cast<int>(k.size(0)), fptr(partials), mptr(v_x));
  return v_x;
}

static_assert(sizeof(fields::Bf16) == sizeof(at::BFloat16), "bfloat16 layouts differ");
fields::Bf16* bf16_ptr(const Tensor& t) { return reinterpret_cast<fields::Bf16*>(t.data_ptr<at::BFloat16>()); }

void check_modulated(const Tensor& h, const Tensor& gamma, const Tensor& beta) {
  TORCH_CHECK(h.dim() == 2 && h.is_contiguous(), "modulated_relu: h must be a contiguous [N, W] tensor");
  TORCH_CHECK(h.scalar_type() == at::kFloat || h.scalar_type() == at::kBFloat16,
              "modulated_relu: h must be float32 or bfloat16");
  for (const Tensor* t : {&gamma, &beta})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == h.size(0),
                "modulated_relu: gamma and beta must be contiguous float32 [N]");
}

std::tuple<Tensor, Tensor, Tensor> modulated_relu_fwd(const Tensor& h, const Tensor& gamma, const Tensor& beta,
                                                      double eps) {
  check_modulated(h, gamma, beta);
  const int64_t n = h.size(0), w = h.size(1);
  Tensor y = at::empty_like(h), mean = at::empty({n}, gamma.options()), rstd = at::empty({n}, gamma.options());
  const float *g = gamma.data_ptr<float>(), *b = beta.data_ptr<float>();
  if (h.scalar_type() == at::kFloat)
    fields::cpu::modulated_relu_forward(h.data_ptr<float>(), g, b, n, w, eps, y.data_ptr<float>(),
                                        mean.data_ptr<float>(), rstd.data_ptr<float>());
  else
    fields::cpu::modulated_relu_forward(bf16_ptr(h), g, b, n, w, eps, bf16_ptr(y), mean.data_ptr<float>(),
                                        rstd.data_ptr<float>());
  return {y, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor> modulated_relu_bwd(const Tensor& dy_, const Tensor& h, const Tensor& gamma,
                                                      const Tensor& beta, const Tensor& mean, const Tensor& rstd) {
  check_modulated(h, gamma, beta);
  const Tensor dy = dy_.to(h.scalar_type()).contiguous();
  TORCH_CHECK(dy.sizes() == h.sizes(), "modulated_relu: grad must have h's shape");
  const int64_t n = h.size(0), w = h.size(1);
  Tensor dh = at::empty_like(h), dgamma = at::empty({n}, gamma.options()), dbeta = at::empty({n}, gamma.options());
  const float *g = gamma.data_ptr<float>(), *b = beta.data_ptr<float>();
  const float *mu = mean.data_ptr<float>(), *r = rstd.data_ptr<float>();
  if (h.scalar_type() == at::kFloat)
    fields::cpu::modulated_relu_backward(dy.data_ptr<float>(), h.data_ptr<float>(), g, b, mu, r, n, w,
                                         dh.data_ptr<float>(), dgamma.data_ptr<float>(), dbeta.data_ptr<float>());
  else
    fields::cpu::modulated_relu_backward(bf16_ptr(dy), bf16_ptr(h), g, b, mu, r, n, w, bf16_ptr(dh),
                                         dgamma.data_ptr<float>(), dbeta.data_ptr<float>());
  return {dh, dgamma, dbeta};
}

bool has_cuda() {
#ifdef FIELDS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(fields, m) {
  m.def("hash_encode_fwd(Tensor x, Tensor table, Tensor resolutions) -> Tensor");
  m.def("hash_encode_bwd(Tensor grad_out, Tensor x, Tensor table, Tensor resolutions, bool need_x_grad)"
        " -> (Tensor, Tensor)");
  m.def("march_rays(Tensor origins, Tensor dirs, Tensor binary, Tensor aabb, float step_size, float near,"
        " float far, float cone_angle, float max_step, Tensor? jitter, bool contract=False, int n_outer=0)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("transmittance(Tensor tau, Tensor offsets) -> Tensor");
  m.def("composite_fwd(Tensor sigmas, Tensor rgbs, Tensor t_starts, Tensor t_ends, Tensor offsets)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("composite_bwd(Tensor? grad_weights, Tensor grad_rgb, Tensor grad_opacity, Tensor grad_depth,"
        " Tensor sigmas, Tensor rgbs, Tensor t_starts, Tensor t_ends, Tensor offsets) -> (Tensor, Tensor)");
  m.def("composite_round(Tensor sigmas, Tensor t_starts, Tensor t_ends, Tensor offsets, Tensor rays,"
        " Tensor(a!) optical, Tensor(b!) opacity, Tensor(c!) depth, float stop_eps, float alpha_thre,"
        " float weight_thre) -> (Tensor, Tensor)");
  m.def("round_samples(Tensor ray_indices, Tensor t_starts, Tensor t_ends, Tensor origins, Tensor dirs,"
        " Tensor first, Tensor offsets) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("splat_project_fwd(Tensor means, Tensor quats, Tensor scales, Tensor viewmat, float fx, float fy, float cx,"
        " float cy, int width, int height, float near) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("splat_project_bwd(Tensor v_means2d, Tensor v_conics, Tensor v_depths, Tensor v_compensations,"
        " Tensor means, Tensor quats, Tensor scales, Tensor viewmat, float fx, float fy, float cx, float cy,"
        " int width, int height, float near, bool viewmat_grad=False)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("splat_bin(Tensor means2d, Tensor conics, Tensor opacities, Tensor radii, Tensor depths, int width, "
        "int height, int tile_size)"
        " -> (Tensor, Tensor)");
  m.def("splat_rasterize_fwd(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, Tensor ids,"
        " Tensor tile_offsets, int width, int height, int tile_size) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("splat_rasterize_render(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, Tensor ids,"
        " Tensor tile_offsets, Tensor background, int width, int height, int tile_size) -> (Tensor, Tensor)");
  m.def("splat_rasterize_bwd(Tensor v_image, Tensor v_alpha, Tensor means2d, Tensor conics, Tensor colors,"
        " Tensor opacities, Tensor ids, Tensor tile_offsets, Tensor final_T, Tensor last, int width, int height,"
        " int tile_size) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("sh_color_fwd(Tensor dirs, Tensor sh0, Tensor shN, int bands) -> Tensor");
  m.def("sh_color_bwd(Tensor v_rgb, Tensor dirs, Tensor sh0, Tensor shN, int bands) -> (Tensor, Tensor, Tensor)");
  // CPU only
  m.def("sh_encode(Tensor dirs, int degree) -> Tensor");
  m.def("contract_unit(Tensor x, Tensor aabb) -> (Tensor, Tensor)");
  m.def("ssim_fwd(Tensor x, Tensor y, Tensor window, float c1, float c2, float eps) -> (Tensor, Tensor)");
  m.def("ssim_bwd(Tensor v_map, Tensor x, Tensor y, Tensor window, Tensor partials) -> Tensor");
  m.def("modulated_relu_fwd(Tensor h, Tensor gamma, Tensor beta, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("modulated_relu_bwd(Tensor grad, Tensor h, Tensor gamma, Tensor beta, Tensor mean, Tensor rstd)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("mlp_fwd(Tensor[] inputs, Tensor[] weights, Tensor[] biases, bool relu_out, bool save, bool bf16)"
        " -> (Tensor, Tensor[])");
  m.def("mlp_bwd(Tensor grad_out, Tensor[] inputs, Tensor[] hidden, Tensor out, Tensor[] weights, Tensor[] biases,"
        " bool relu_out, bool[] need_input_grad, bool bf16) -> (Tensor[], Tensor[], Tensor[])");
  // No tensors, so one implementation for every device: what this build can do, the CPU threads' float mode
  m.def("has_cuda() -> bool", &has_cuda);
  m.def("mlp_amx() -> bool", &fields::cpu::mlp_amx);
  m.def("mlp_bf16() -> bool", &fields::cpu::mlp_bf16);
  m.def("flush_denormals(bool on) -> bool", &fields::cpu::flush_denormals);
}

// The same wrappers serve both devices: each one dispatches on its tensors' device.
void register_device_impls(torch::Library& m) {
  m.impl("hash_encode_fwd", &hash_encode_fwd);
  m.impl("hash_encode_bwd", &hash_encode_bwd);
  m.impl("march_rays", &march_rays);
  m.impl("transmittance", &transmittance);
  m.impl("composite_fwd", &composite_fwd);
  m.impl("composite_bwd", &composite_bwd);
  m.impl("composite_round", &composite_round);
  m.impl("round_samples", &round_samples);
  m.impl("splat_project_fwd", &splat_project_fwd);
  m.impl("splat_project_bwd", &splat_project_bwd);
  m.impl("splat_bin", &splat_bin);
  m.impl("splat_rasterize_fwd", &splat_rasterize_fwd);
  m.impl("splat_rasterize_render", &splat_rasterize_render);
  m.impl("splat_rasterize_bwd", &splat_rasterize_bwd);
  m.impl("sh_color_fwd", &sh_color_fwd);
  m.impl("sh_color_bwd", &sh_color_bwd);
}

TORCH_LIBRARY_IMPL(fields, CPU, m) {
  register_device_impls(m);
  m.impl("sh_encode", &sh_encode);
  m.impl("contract_unit", &contract_unit);
  m.impl("ssim_fwd", &ssim_fwd);
  m.impl("ssim_bwd", &ssim_bwd);
  m.impl("modulated_relu_fwd", &modulated_relu_fwd);
  m.impl("modulated_relu_bwd", &modulated_relu_bwd);
  m.impl("mlp_fwd", &fields::cpu::mlp_fwd);
  m.impl("mlp_bwd", &fields::cpu::mlp_bwd);
}

#ifdef FIELDS_WITH_CUDA
TORCH_LIBRARY_IMPL(fields, CUDA, m) { register_device_impls(m); }
#endif
