// Unpooling layer for BVLC Caffe 1.0, written for caffe-cae.
//
// Semantics follow the unpooling layer of H. Noh's Caffe fork, which the paper of
// Turchenko, Chalmers & Luczak (2019) used:
//   MAX, two bottoms: bottom[1] is the mask top of a MAX Pooling layer (the flat index
//        h * W + w inside each channel map of the unpooled output, stored as Dtype);
//        each value goes to its switch, zeros elsewhere.
//   MAX, one bottom:  each value goes to the top-left cell of its window
//        (row ph * stride_h, column pw * stride_w, clamped to the output), zeros elsewhere.
//   AVE:  each value, divided by the size of its window, is added over the window.
//   TILE: each value is added over its window (copied, when windows do not overlap).
// Output size: unpool_size, or unpool_h and unpool_w, else
//   max((H - 1) * stride + kernel - 2 * pad, H * stride - pad + 1).
// Only pad == 0 is supported (refused otherwise). The mask bottom gets no gradient.
// Backward is the exact gradient of forward for every mode (Noh's TILE backward divided
// by the window size; this one does not, so that it is the gradient of TILE forward).
#ifndef CAFFE_UNPOOLING_LAYER_HPP_
#define CAFFE_UNPOOLING_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

template <typename Dtype>
class UnpoolingLayer : public Layer<Dtype> {
 public:
  explicit UnpoolingLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "Unpooling"; }
  virtual inline int MinBottomBlobs() const { return 1; }
  // bottom[1], if given, is the switch mask of a MAX Pooling layer.
  virtual inline int MaxBottomBlobs() const { return 2; }
  virtual inline int ExactNumTopBlobs() const { return 1; }
  // The mask is an index, not a value: it never takes a gradient.
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return bottom_index == 0;
  }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  int kernel_h_, kernel_w_;
  int stride_h_, stride_w_;
  int pad_h_, pad_w_;
  int channels_;
  int height_, width_;
  // Requested output size; -1 when it is computed from the input size.
  int unpool_h_, unpool_w_;
  int unpooled_height_, unpooled_width_;
};

}  // namespace caffe

#endif  // CAFFE_UNPOOLING_LAYER_HPP_
