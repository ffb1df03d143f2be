// Tests of the caffe-cae Unpooling layer, in the style of Caffe's own layer tests:
// hand-computed forward results for every mode, GradientChecker for backward, and a
// MAX Pooling -> Unpooling round trip through the pooling mask (the paper's Model 3).
#include <algorithm>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/pooling_layer.hpp"
#include "caffe/layers/unpooling_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class UnpoolingLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  UnpoolingLayerTest()
      : blob_bottom_(new Blob<Dtype>()),
        blob_mask_(new Blob<Dtype>()),
        blob_top_(new Blob<Dtype>()) {}
  virtual void SetUp() {
    Caffe::set_random_seed(1701);
    blob_bottom_vec_.push_back(blob_bottom_);
    blob_top_vec_.push_back(blob_top_);
  }
  virtual ~UnpoolingLayerTest() {
    delete blob_bottom_;
    delete blob_mask_;
    delete blob_top_;
  }
  // 2 x 2 channels of [1 2; 3 4] (times 1 + n + c, to tell the maps apart).
  void FillSmall() {
    blob_bottom_->Reshape(2, 2, 2, 2);
    Dtype* data = blob_bottom_->mutable_cpu_data();
    for (int m = 0; m < 4; ++m) {
      for (int i = 0; i < 4; ++i) {
        data[m * 4 + i] = (i + 1) * (m + 1);
      }
    }
  }
  void FillGaussian(int num, int channels, int height, int width) {
    blob_bottom_->Reshape(num, channels, height, width);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(blob_bottom_);
  }
  Dtype Top(int m, int h, int w) {
    return blob_top_->cpu_data()[(m * blob_top_->height() + h) *
                                 blob_top_->width() + w];
  }
  Blob<Dtype>* const blob_bottom_;
  Blob<Dtype>* const blob_mask_;
  Blob<Dtype>* const blob_top_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(UnpoolingLayerTest, TestDtypesAndDevices);

TYPED_TEST(UnpoolingLayerTest, TestSetupDefaultSize) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  UnpoolingParameter* p = layer_param.mutable_unpooling_param();
  p->set_kernel_size(2);
  p->set_stride(2);
  this->FillGaussian(2, 3, 3, 2);
  UnpoolingLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  // max((H - 1) * s + k, H * s + 1) = max(6, 7) and max(4, 5)
  EXPECT_EQ(this->blob_top_->num(), 2);
  EXPECT_EQ(this->blob_top_->channels(), 3);
  EXPECT_EQ(this->blob_top_->height(), 7);
  EXPECT_EQ(this->blob_top_->width(), 5);
}

TYPED_TEST(UnpoolingLayerTest, TestSetupGivenSize) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  UnpoolingParameter* p = layer_param.mutable_unpooling_param();
  p->set_kernel_size(2);
  p->set_stride(2);
  p->set_unpool_h(6);
  p->set_unpool_w(4);
  this->FillGaussian(2, 3, 3, 2);
  UnpoolingLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(this->blob_top_->height(), 6);
  EXPECT_EQ(this->blob_top_->width(), 4);
  p->clear_unpool_h();
  p->clear_unpool_w();
  p->set_unpool_size(8);
  UnpoolingLayer<Dtype> layer2(layer_param);
  layer2.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(this->blob_top_->height(), 8);
  EXPECT_EQ(this->blob_top_->width(), 8);
}

TYPED_TEST(UnpoolingLayerTest, TestForwardMaxMask) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  UnpoolingParameter* p = layer_param.mutable_unpooling_param();
  p->set_unpool(UnpoolingParameter_UnpoolMethod_MAX);
  p->set_kernel_size(2);
  p->set_stride(2);
  p->set_unpool_size(4);
  this->FillSmall();
  // Switches of the four cells in a 4x4 map: 5 = (1,1), 2 = (0,2), 12 = (3,0),
  // 15 = (3,3); the second map of every image uses 0, 3, 8, 10.
  const int switches[2][4] = {{5, 2, 12, 15}, {0, 3, 8, 10}};
  this->blob_mask_->ReshapeLike(*this->blob_bottom_);
  for (int m = 0; m < 4; ++m) {
    for (int i = 0; i < 4; ++i) {
      this->blob_mask_->mutable_cpu_data()[m * 4 + i] = switches[m % 2][i];
    }
  }
  this->blob_bottom_vec_.push_back(this->blob_mask_);
  UnpoolingLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  ASSERT_EQ(this->blob_top_->count(), 4 * 16);
  for (int m = 0; m < 4; ++m) {
    for (int j = 0; j < 16; ++j) {
      Dtype expected = 0;
      for (int i = 0; i < 4; ++i) {
        if (switches[m % 2][i] == j) expected = (i + 1) * (m + 1);
      }
      EXPECT_EQ(this->blob_top_->cpu_data()[m * 16 + j], expected)
          << "map " << m << " cell " << j;
    }
  }
}

TYPED_TEST(UnpoolingLayerTest, TestForwardMaxNoMask) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  UnpoolingParameter* p = layer_param.mutable_unpooling_param();
  p->set_unpool(UnpoolingParameter_UnpoolMethod_MAX);
  p->set_kernel_size(2);
  p->set_stride(2);
  p->set_unpool_size(4);
  this->FillSmall();
  UnpoolingLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  // [1 0 2 0; 0 0 0 0; 3 0 4 0; 0 0 0 0] times (m + 1)
  for (int m = 0; m < 4; ++m) {
    for (int h = 0; h < 4; ++h) {
      for (int w = 0; w < 4; ++w) {
        Dtype expected = 0;
        if (h % 2 == 0 && w % 2 == 0) expected = (h + w / 2 + 1) * (m + 1);
        EXPECT_EQ(this->Top(m, h, w), expected) << m << " " << h << " " << w;
      }
    }
  }
}

TYPED_TEST(UnpoolingLayerTest, TestForwardAve) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  UnpoolingParameter* p = layer_param.mutable_unpooling_param();
  p->set_unpool(UnpoolingParameter_UnpoolMethod_AVE);
  p->set_kernel_size(2);
  p->set_stride(2);
  p->set_unpool_size(3);  // the second row and column of windows are clipped
  this->FillSmall();
  UnpoolingLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  // Windows of sizes 4, 2, 2, 1:
  // [1/4 1/4 2/2; 1/4 1/4 2/2; 3/2 3/2 4/1] times (m + 1)
  const Dtype expected[9] = {0.25, 0.25, 1, 0.25, 0.25, 1, 1.5, 1.5, 4};
  for (int m = 0; m < 4; ++m) {
    for (int j = 0; j < 9; ++j) {
      EXPECT_NEAR(this->blob_top_->cpu_data()[m * 9 + j],
                  expected[j] * (m + 1), 1e-6) << m << " " << j;
    }
  }
}

TYPED_TEST(UnpoolingLayerTest, TestForwardTileOverlap) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  UnpoolingParameter* p = layer_param.mutable_unpooling_param();
  p->set_unpool(UnpoolingParameter_UnpoolMethod_TILE);
  p->set_kernel_size(3);
  p->set_stride(2);
  this->FillSmall();
  UnpoolingLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  // Output max((2 - 1) * 2 + 3, 2 * 2 + 1) = 5; windows rows/cols [0,3) and [2,5),
  // overlapping in row/column 2, where the copies add up.
  ASSERT_EQ(this->blob_top_->height(), 5);
  ASSERT_EQ(this->blob_top_->width(), 5);
  const Dtype expected[25] = {1, 1, 3, 2, 2,
                              1, 1, 3, 2, 2,
                              4, 4, 10, 6, 6,
                              3, 3, 7, 4, 4,
                              3, 3, 7, 4, 4};
  for (int m = 0; m < 4; ++m) {
    for (int j = 0; j < 25; ++j) {
      EXPECT_EQ(this->blob_top_->cpu_data()[m * 25 + j], expected[j] * (m + 1))
          << m << " " << j;
    }
  }
}

TYPED_TEST(UnpoolingLayerTest, TestForwardTile) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  UnpoolingParameter* p = layer_param.mutable_unpooling_param();
  p->set_unpool(UnpoolingParameter_UnpoolMethod_TILE);
  p->set_kernel_size(2);
  p->set_stride(2);
  p->set_unpool_size(4);
  this->FillSmall();
  UnpoolingLayer<Dtype> layer(layer_param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  for (int m = 0; m < 4; ++m) {
    for (int h = 0; h < 4; ++h) {
      for (int w = 0; w < 4; ++w) {
        EXPECT_EQ(this->Top(m, h, w), (2 * (h / 2) + w / 2 + 1) * (m + 1));
      }
    }
  }
}

TYPED_TEST(UnpoolingLayerTest, TestPoolUnpoolPutsMaximaBack) {
  typedef typename TypeParam::Dtype Dtype;
  this->FillGaussian(2, 3, 8, 8);
  LayerParameter pool_param;
  pool_param.mutable_pooling_param()->set_pool(PoolingParameter_PoolMethod_MAX);
  pool_param.mutable_pooling_param()->set_kernel_size(2);
  pool_param.mutable_pooling_param()->set_stride(2);
  Blob<Dtype> pooled;
  vector<Blob<Dtype>*> pool_top;
  pool_top.push_back(&pooled);
  pool_top.push_back(this->blob_mask_);
  PoolingLayer<Dtype> pool(pool_param);
  pool.SetUp(this->blob_bottom_vec_, pool_top);
  pool.Forward(this->blob_bottom_vec_, pool_top);

  LayerParameter layer_param;
  UnpoolingParameter* p = layer_param.mutable_unpooling_param();
  p->set_kernel_size(2);
  p->set_stride(2);
  p->set_unpool_size(8);
  vector<Blob<Dtype>*> unpool_bottom;
  unpool_bottom.push_back(&pooled);
  unpool_bottom.push_back(this->blob_mask_);
  UnpoolingLayer<Dtype> layer(layer_param);
  layer.SetUp(unpool_bottom, this->blob_top_vec_);
  layer.Forward(unpool_bottom, this->blob_top_vec_);
  ASSERT_EQ(this->blob_top_->shape(), this->blob_bottom_->shape());
  // Each 2x2 window keeps exactly its maximum, in place; the rest is zero.
  const Dtype* in = this->blob_bottom_->cpu_data();
  const Dtype* out = this->blob_top_->cpu_data();
  for (int m = 0; m < 6; ++m) {
    for (int h = 0; h < 8; h += 2) {
      for (int w = 0; w < 8; w += 2) {
        Dtype best = in[m * 64 + h * 8 + w];
        for (int dh = 0; dh < 2; ++dh) {
          for (int dw = 0; dw < 2; ++dw) {
            best = std::max(best, in[m * 64 + (h + dh) * 8 + w + dw]);
          }
        }
        int kept = 0;
        for (int dh = 0; dh < 2; ++dh) {
          for (int dw = 0; dw < 2; ++dw) {
            const int j = m * 64 + (h + dh) * 8 + w + dw;
            if (out[j] != 0) {
              ++kept;
              EXPECT_EQ(out[j], in[j]);
              EXPECT_EQ(out[j], best);
            }
          }
        }
        EXPECT_EQ(kept, 1);
      }
    }
  }
}

TYPED_TEST(UnpoolingLayerTest, TestGradientMaxMask) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  UnpoolingParameter* p = layer_param.mutable_unpooling_param();
  p->set_kernel_size(2);
  p->set_stride(2);
  p->set_unpool_size(6);
  this->FillGaussian(2, 2, 3, 3);
  // A switch somewhere inside each cell's window.
  this->blob_mask_->ReshapeLike(*this->blob_bottom_);
  Dtype* mask = this->blob_mask_->mutable_cpu_data();
  for (int m = 0; m < 4; ++m) {
    for (int ph = 0; ph < 3; ++ph) {
      for (int pw = 0; pw < 3; ++pw) {
        const int k = (m + ph * 3 + pw) % 4;
        mask[m * 9 + ph * 3 + pw] = (2 * ph + k / 2) * 6 + 2 * pw + k % 2;
      }
    }
  }
  this->blob_bottom_vec_.push_back(this->blob_mask_);
  UnpoolingLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_, 0);
}

TYPED_TEST(UnpoolingLayerTest, TestGradientMaxNoMask) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  UnpoolingParameter* p = layer_param.mutable_unpooling_param();
  p->set_kernel_size(2);
  p->set_stride(2);
  this->FillGaussian(2, 2, 3, 3);
  UnpoolingLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

TYPED_TEST(UnpoolingLayerTest, TestGradientAve) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  UnpoolingParameter* p = layer_param.mutable_unpooling_param();
  p->set_unpool(UnpoolingParameter_UnpoolMethod_AVE);
  p->set_kernel_size(3);
  p->set_stride(2);
  p->set_unpool_size(6);  // overlapping and clipped windows
  this->FillGaussian(2, 2, 3, 3);
  UnpoolingLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

TYPED_TEST(UnpoolingLayerTest, TestGradientTile) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter layer_param;
  UnpoolingParameter* p = layer_param.mutable_unpooling_param();
  p->set_unpool(UnpoolingParameter_UnpoolMethod_TILE);
  p->set_kernel_h(3);
  p->set_kernel_w(2);
  p->set_stride_h(2);
  p->set_stride_w(2);
  this->FillGaussian(2, 2, 3, 2);
  UnpoolingLayer<Dtype> layer(layer_param);
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->blob_bottom_vec_,
      this->blob_top_vec_);
}

}  // namespace caffe
