// Unpooling layer (GPU part). Semantics: see include/caffe/layers/unpooling_layer.hpp.
// One thread per input cell for MAX (scatter into a zeroed output) and for every backward;
// one thread per output cell for AVE and TILE forward (gather), so no atomics are needed.
#include <vector>

#include "caffe/layers/unpooling_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
__global__ void UnpoolMaxForward(const int nthreads, const Dtype* bottom_data,
    const Dtype* mask, const int height, const int width,
    const int unpooled_height, const int unpooled_width,
    const int stride_h, const int stride_w, Dtype* top_data) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int map = index / (height * width);
    Dtype* out = top_data + map * unpooled_height * unpooled_width;
    int j;
    if (mask) {
      j = static_cast<int>(mask[index]);
      if (j < 0 || j >= unpooled_height * unpooled_width) continue;
    } else {
      const int pw = index % width;
      const int ph = (index / width) % height;
      const int h = min(ph * stride_h, unpooled_height - 1);
      const int w = min(pw * stride_w, unpooled_width - 1);
      j = h * unpooled_width + w;
    }
    out[j] = bottom_data[index];
  }
}

template <typename Dtype>
__global__ void UnpoolWindowForward(const int nthreads, const Dtype* bottom_data,
    const int height, const int width, const int unpooled_height,
    const int unpooled_width, const int kernel_h, const int kernel_w,
    const int stride_h, const int stride_w, const bool average,
    Dtype* top_data) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int w = index % unpooled_width;
    const int h = (index / unpooled_width) % unpooled_height;
    const int map = index / (unpooled_width * unpooled_height);
    // Input cells whose window [p * stride, p * stride + kernel) holds (h, w).
    const int phstart = (h < kernel_h) ? 0 : (h - kernel_h) / stride_h + 1;
    const int phend = min(h / stride_h + 1, height);
    const int pwstart = (w < kernel_w) ? 0 : (w - kernel_w) / stride_w + 1;
    const int pwend = min(w / stride_w + 1, width);
    const Dtype* in = bottom_data + map * height * width;
    Dtype sum = 0;
    for (int ph = phstart; ph < phend; ++ph) {
      for (int pw = pwstart; pw < pwend; ++pw) {
        Dtype v = in[ph * width + pw];
        if (average) {
          const int hs = ph * stride_h;
          const int ws = pw * stride_w;
          const int size = (min(hs + kernel_h, unpooled_height) - hs) *
                           (min(ws + kernel_w, unpooled_width) - ws);
          v /= size;
        }
        sum += v;
      }
    }
    top_data[index] = sum;
  }
}

template <typename Dtype>
__global__ void UnpoolMaxBackward(const int nthreads, const Dtype* top_diff,
    const Dtype* mask, const int height, const int width,
    const int unpooled_height, const int unpooled_width,
    const int stride_h, const int stride_w, Dtype* bottom_diff) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int map = index / (height * width);
    const Dtype* out = top_diff + map * unpooled_height * unpooled_width;
    int j;
    if (mask) {
      j = static_cast<int>(mask[index]);
    } else {
      const int pw = index % width;
      const int ph = (index / width) % height;
      const int h = min(ph * stride_h, unpooled_height - 1);
      const int w = min(pw * stride_w, unpooled_width - 1);
      j = h * unpooled_width + w;
    }
    bottom_diff[index] =
        (j >= 0 && j < unpooled_height * unpooled_width) ? out[j] : Dtype(0);
  }
}

template <typename Dtype>
__global__ void UnpoolWindowBackward(const int nthreads, const Dtype* top_diff,
    const int height, const int width, const int unpooled_height,
    const int unpooled_width, const int kernel_h, const int kernel_w,
    const int stride_h, const int stride_w, const bool average,
    Dtype* bottom_diff) {
  CUDA_KERNEL_LOOP(index, nthreads) {
    const int pw = index % width;
    const int ph = (index / width) % height;
    const int map = index / (width * height);
    const int hstart = ph * stride_h;
    const int wstart = pw * stride_w;
    const int hend = min(hstart + kernel_h, unpooled_height);
    const int wend = min(wstart + kernel_w, unpooled_width);
    const Dtype* out = top_diff + map * unpooled_height * unpooled_width;
    Dtype sum = 0;
    for (int h = hstart; h < hend; ++h) {
      for (int w = wstart; w < wend; ++w) {
        sum += out[h * unpooled_width + w];
      }
    }
    if (average && hend > hstart && wend > wstart) {
      sum /= (hend - hstart) * (wend - wstart);
    }
    bottom_diff[index] = sum;
  }
}

template <typename Dtype>
void UnpoolingLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) {
  const Dtype* bottom_data = bottom[0]->gpu_data();
  const Dtype* mask = bottom.size() > 1 ? bottom[1]->gpu_data() : NULL;
  Dtype* top_data = top[0]->mutable_gpu_data();
  const int count = bottom[0]->count();
  const int top_count = top[0]->count();
  switch (this->layer_param_.unpooling_param().unpool()) {
  case UnpoolingParameter_UnpoolMethod_MAX:
    caffe_gpu_set(top_count, Dtype(0), top_data);
    // NOLINT_NEXT_LINE(whitespace/operators)
    UnpoolMaxForward<Dtype><<<CAFFE_GET_BLOCKS(count), CAFFE_CUDA_NUM_THREADS>>>(
        count, bottom_data, mask, height_, width_, unpooled_height_,
        unpooled_width_, stride_h_, stride_w_, top_data);
    break;
  case UnpoolingParameter_UnpoolMethod_AVE:
  case UnpoolingParameter_UnpoolMethod_TILE:
    // NOLINT_NEXT_LINE(whitespace/operators)
    UnpoolWindowForward<Dtype><<<CAFFE_GET_BLOCKS(top_count),
        CAFFE_CUDA_NUM_THREADS>>>(
        top_count, bottom_data, height_, width_, unpooled_height_,
        unpooled_width_, kernel_h_, kernel_w_, stride_h_, stride_w_,
        this->layer_param_.unpooling_param().unpool() ==
            UnpoolingParameter_UnpoolMethod_AVE, top_data);
    break;
  default:
    LOG(FATAL) << "Unknown unpooling method.";
  }
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void UnpoolingLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) {
    return;
  }
  const Dtype* top_diff = top[0]->gpu_diff();
  const Dtype* mask = bottom.size() > 1 ? bottom[1]->gpu_data() : NULL;
  Dtype* bottom_diff = bottom[0]->mutable_gpu_diff();
  const int count = bottom[0]->count();
  switch (this->layer_param_.unpooling_param().unpool()) {
  case UnpoolingParameter_UnpoolMethod_MAX:
    // NOLINT_NEXT_LINE(whitespace/operators)
    UnpoolMaxBackward<Dtype><<<CAFFE_GET_BLOCKS(count), CAFFE_CUDA_NUM_THREADS>>>(
        count, top_diff, mask, height_, width_, unpooled_height_,
        unpooled_width_, stride_h_, stride_w_, bottom_diff);
    break;
  case UnpoolingParameter_UnpoolMethod_AVE:
  case UnpoolingParameter_UnpoolMethod_TILE:
    // NOLINT_NEXT_LINE(whitespace/operators)
    UnpoolWindowBackward<Dtype><<<CAFFE_GET_BLOCKS(count),
        CAFFE_CUDA_NUM_THREADS>>>(
        count, top_diff, height_, width_, unpooled_height_, unpooled_width_,
        kernel_h_, kernel_w_, stride_h_, stride_w_,
        this->layer_param_.unpooling_param().unpool() ==
            UnpoolingParameter_UnpoolMethod_AVE, bottom_diff);
    break;
  default:
    LOG(FATAL) << "Unknown unpooling method.";
  }
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(UnpoolingLayer);

}  // namespace caffe
