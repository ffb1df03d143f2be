// Unpooling layer (CPU part). Semantics: see include/caffe/layers/unpooling_layer.hpp.
#include <algorithm>
#include <vector>

#include "caffe/layers/unpooling_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void UnpoolingLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const UnpoolingParameter& p = this->layer_param_.unpooling_param();
  const string& name = this->layer_param_.name();
  CHECK(p.has_kernel_size() != (p.has_kernel_h() && p.has_kernel_w()))
      << "Unpooling layer " << name
      << ": give kernel_size, or kernel_h and kernel_w (not both).";
  CHECK(p.has_kernel_h() == p.has_kernel_w())
      << "Unpooling layer " << name << ": kernel_h and kernel_w go together.";
  CHECK(!(p.has_stride() && (p.has_stride_h() || p.has_stride_w())))
      << "Unpooling layer " << name
      << ": give stride, or stride_h and stride_w (not both).";
  CHECK(p.has_stride_h() == p.has_stride_w())
      << "Unpooling layer " << name << ": stride_h and stride_w go together.";
  CHECK(!(p.has_unpool_size() && (p.has_unpool_h() || p.has_unpool_w())))
      << "Unpooling layer " << name
      << ": give unpool_size, or unpool_h and unpool_w (not both).";
  CHECK(p.has_unpool_h() == p.has_unpool_w())
      << "Unpooling layer " << name << ": unpool_h and unpool_w go together.";

  if (p.has_kernel_size()) {
    kernel_h_ = kernel_w_ = p.kernel_size();
  } else {
    kernel_h_ = p.kernel_h();
    kernel_w_ = p.kernel_w();
  }
  CHECK_GT(kernel_h_, 0) << "Unpooling layer " << name << ": kernel must be > 0.";
  CHECK_GT(kernel_w_, 0) << "Unpooling layer " << name << ": kernel must be > 0.";
  if (p.has_stride_h()) {
    stride_h_ = p.stride_h();
    stride_w_ = p.stride_w();
  } else {
    stride_h_ = stride_w_ = p.stride();
  }
  CHECK_GT(stride_h_, 0) << "Unpooling layer " << name << ": stride must be > 0.";
  CHECK_GT(stride_w_, 0) << "Unpooling layer " << name << ": stride must be > 0.";
  if (p.has_pad_h() || p.has_pad_w()) {
    pad_h_ = p.pad_h();
    pad_w_ = p.pad_w();
  } else {
    pad_h_ = pad_w_ = p.pad();
  }
  if (pad_h_ != 0 || pad_w_ != 0) {
    LOG(FATAL) << "Unpooling layer " << name << ": pad " << pad_h_ << "x"
        << pad_w_ << " is not supported; only pad 0 is implemented.";
  }
  if (p.has_unpool_size()) {
    unpool_h_ = unpool_w_ = p.unpool_size();
  } else if (p.has_unpool_h()) {
    unpool_h_ = p.unpool_h();
    unpool_w_ = p.unpool_w();
  } else {
    unpool_h_ = unpool_w_ = -1;
  }
  if (unpool_h_ != -1) {
    CHECK_GT(unpool_h_, 0) << "Unpooling layer " << name
        << ": unpool size must be > 0.";
    CHECK_GT(unpool_w_, 0) << "Unpooling layer " << name
        << ": unpool size must be > 0.";
  }
}

template <typename Dtype>
void UnpoolingLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  CHECK_EQ(4, bottom[0]->num_axes()) << "Unpooling layer "
      << this->layer_param_.name() << ": input must have 4 axes (N, C, H, W).";
  if (bottom.size() > 1) {
    CHECK(bottom[0]->shape() == bottom[1]->shape()) << "Unpooling layer "
        << this->layer_param_.name() << ": the mask bottom must have the shape "
        << bottom[0]->shape_string() << ", not " << bottom[1]->shape_string();
    CHECK(this->layer_param_.unpooling_param().unpool() ==
          UnpoolingParameter_UnpoolMethod_MAX) << "Unpooling layer "
        << this->layer_param_.name() << ": a mask bottom needs unpool: MAX.";
  }
  channels_ = bottom[0]->channels();
  height_ = bottom[0]->height();
  width_ = bottom[0]->width();
  if (unpool_h_ > 0) {
    unpooled_height_ = unpool_h_;
    unpooled_width_ = unpool_w_;
  } else {
    unpooled_height_ = std::max((height_ - 1) * stride_h_ + kernel_h_ - 2 * pad_h_,
                                height_ * stride_h_ - pad_h_ + 1);
    unpooled_width_ = std::max((width_ - 1) * stride_w_ + kernel_w_ - 2 * pad_w_,
                               width_ * stride_w_ - pad_w_ + 1);
  }
  top[0]->Reshape(bottom[0]->num(), channels_, unpooled_height_,
                  unpooled_width_);
}

template <typename Dtype>
void UnpoolingLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const Dtype* bottom_data = bottom[0]->cpu_data();
  const Dtype* mask = bottom.size() > 1 ? bottom[1]->cpu_data() : NULL;
  Dtype* top_data = top[0]->mutable_cpu_data();
  caffe_set(top[0]->count(), Dtype(0), top_data);
  const int in_size = height_ * width_;
  const int out_size = unpooled_height_ * unpooled_width_;
  const int maps = bottom[0]->num() * channels_;
  const UnpoolingParameter_UnpoolMethod method =
      this->layer_param_.unpooling_param().unpool();
  for (int m = 0; m < maps; ++m) {
    const Dtype* in = bottom_data + m * in_size;
    Dtype* out = top_data + m * out_size;
    for (int ph = 0; ph < height_; ++ph) {
      for (int pw = 0; pw < width_; ++pw) {
        const int i = ph * width_ + pw;
        const int hstart = ph * stride_h_;
        const int wstart = pw * stride_w_;
        const int hend = std::min(hstart + kernel_h_, unpooled_height_);
        const int wend = std::min(wstart + kernel_w_, unpooled_width_);
        switch (method) {
        case UnpoolingParameter_UnpoolMethod_MAX:
          if (mask) {
            const int j = static_cast<int>(mask[m * in_size + i]);
            CHECK(j >= 0 && j < out_size) << "Unpooling layer "
                << this->layer_param_.name() << ": switch " << j
                << " outside the " << unpooled_height_ << "x"
                << unpooled_width_ << " output map.";
            out[j] = in[i];
          } else {
            const int h = std::min(hstart, unpooled_height_ - 1);
            const int w = std::min(wstart, unpooled_width_ - 1);
            out[h * unpooled_width_ + w] = in[i];
          }
          break;
        case UnpoolingParameter_UnpoolMethod_AVE:
        case UnpoolingParameter_UnpoolMethod_TILE: {
          if (hend <= hstart || wend <= wstart) break;
          Dtype v = in[i];
          if (method == UnpoolingParameter_UnpoolMethod_AVE) {
            v /= (hend - hstart) * (wend - wstart);
          }
          for (int h = hstart; h < hend; ++h) {
            for (int w = wstart; w < wend; ++w) {
              out[h * unpooled_width_ + w] += v;
            }
          }
          break;
        }
        default:
          LOG(FATAL) << "Unknown unpooling method.";
        }
      }
    }
  }
}

template <typename Dtype>
void UnpoolingLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) {
    return;
  }
  const Dtype* top_diff = top[0]->cpu_diff();
  const Dtype* mask = bottom.size() > 1 ? bottom[1]->cpu_data() : NULL;
  Dtype* bottom_diff = bottom[0]->mutable_cpu_diff();
  const int in_size = height_ * width_;
  const int out_size = unpooled_height_ * unpooled_width_;
  const int maps = bottom[0]->num() * channels_;
  const UnpoolingParameter_UnpoolMethod method =
      this->layer_param_.unpooling_param().unpool();
  for (int m = 0; m < maps; ++m) {
    const Dtype* out = top_diff + m * out_size;
    Dtype* in = bottom_diff + m * in_size;
    for (int ph = 0; ph < height_; ++ph) {
      for (int pw = 0; pw < width_; ++pw) {
        const int i = ph * width_ + pw;
        const int hstart = ph * stride_h_;
        const int wstart = pw * stride_w_;
        const int hend = std::min(hstart + kernel_h_, unpooled_height_);
        const int wend = std::min(wstart + kernel_w_, unpooled_width_);
        Dtype g = 0;
        switch (method) {
        case UnpoolingParameter_UnpoolMethod_MAX:
          if (mask) {
            g = out[static_cast<int>(mask[m * in_size + i])];
          } else {
            const int h = std::min(hstart, unpooled_height_ - 1);
            const int w = std::min(wstart, unpooled_width_ - 1);
            g = out[h * unpooled_width_ + w];
          }
          break;
        case UnpoolingParameter_UnpoolMethod_AVE:
        case UnpoolingParameter_UnpoolMethod_TILE:
          if (hend <= hstart || wend <= wstart) break;
          for (int h = hstart; h < hend; ++h) {
            for (int w = wstart; w < wend; ++w) {
              g += out[h * unpooled_width_ + w];
            }
          }
          if (method == UnpoolingParameter_UnpoolMethod_AVE) {
            g /= (hend - hstart) * (wend - wstart);
          }
          break;
        default:
          LOG(FATAL) << "Unknown unpooling method.";
        }
        in[i] = g;
      }
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(UnpoolingLayer);
#endif

INSTANTIATE_CLASS(UnpoolingLayer);
REGISTER_LAYER_CLASS(Unpooling);

}  // namespace caffe
