"""PocketFlow's ``nets/convnet_at_fmnist.py`` ported to torch (``# port:`` marks each change).

The one structural change: TensorFlow created the layers' variables inside ``forward_fn``; torch
keeps them in a module, so ``forward_fn``'s layers are ``ForwardFn`` (an ``nn.Module``) and the
helper's ``build_model`` returns it. ``forward_train``/``forward_eval`` keep their signatures and
run ``self.model``, the network the learner is training or evaluating.
"""
import torch.nn.functional as F
from absl import flags  # port: tf.app.flags
from torch import nn

from examples.pocketflow_fmnist.fmnist_dataset import FMnistDataset
from nets.pocketflow_compat import mgw, setup_lrn_rate_piecewise_constant
from nets.pocketflow_helper import PocketFlowModelHelper as AbstractModelHelper

FLAGS = flags.FLAGS

flags.DEFINE_float('nb_epochs_rat', 1.0, '# of training epochs\' ratio')
flags.DEFINE_float('lrn_rate_init', 1e-1, 'initial learning rate')
flags.DEFINE_float('batch_size_norm', 128, 'normalization factor of batch size')
flags.DEFINE_float('momentum', 0.9, 'momentum coefficient')
flags.DEFINE_float('loss_w_dcy', 3e-4, 'weight decaying loss\'s coefficient')


class ForwardFn(nn.Module):
  """port: forward_fn's layers (conv1, pool1, conv2, pool2, fc3, fc4) as a module."""

  def __init__(self, data_format):
    super().__init__()
    self.data_format = data_format
    self.conv1 = nn.Conv2d(1, 32, [5, 5], padding='same')
    self.relu1 = nn.ReLU()
    self.pool1 = nn.MaxPool2d([2, 2], 2)
    self.conv2 = nn.Conv2d(32, 64, [5, 5], padding='same')
    self.relu2 = nn.ReLU()
    self.pool2 = nn.MaxPool2d([2, 2], 2)
    self.fc3 = nn.Linear(64 * 7 * 7, 1024)
    self.relu3 = nn.ReLU()
    self.fc4 = nn.Linear(1024, FLAGS.nb_classes)

  def forward(self, inputs):
    """Forward pass function (port: forward_fn(inputs, data_format); torch's images are
    already channels-first, so there is nothing to transpose)."""

    inputs = self.pool1(self.relu1(self.conv1(inputs)))  # conv1
    inputs = self.pool2(self.relu2(self.conv2(inputs)))  # conv2
    inputs = inputs.flatten(1)  # flatten
    inputs = self.relu3(self.fc3(inputs))  # fc3
    inputs = self.fc4(inputs)  # fc4
    # port: no tf.nn.softmax here: calc_loss's cross-entropy takes logits (PocketFlow's
    # softmax_cross_entropy applied a second softmax to these probabilities)
    return inputs


class ModelHelper(AbstractModelHelper):
  """Model helper for creating a ConvNet model for the Fashion-MNIST dataset."""

  def __init__(self, data_format='channels_first'):  # port: torch's layout by default
    """Constructor function."""

    # class-independent initialization
    super(ModelHelper, self).__init__(data_format)

    # initialize training & evaluation subsets
    self.dataset_train = FMnistDataset(is_train=True)
    self.dataset_eval = FMnistDataset(is_train=False)

  def build_dataset_train(self, enbl_trn_val_split=False):
    """Build the data subset for training, usually with data augmentation."""

    return self.dataset_train.build(enbl_trn_val_split)

  def build_dataset_eval(self):
    """Build the data subset for evaluation, usually without data augmentation."""

    return self.dataset_eval.build()

  def build_model(self):
    """port: the network as a module (TensorFlow built it inside forward_fn)."""

    return ForwardFn(self.data_format)

  def forward_train(self, inputs, labels=None):
    """Forward computation at training."""

    return self.model(inputs)  # port: forward_fn(inputs, data_format)

  def forward_eval(self, inputs):
    """Forward computation at evaluation."""

    return self.model(inputs)  # port: forward_fn(inputs, data_format)

  def calc_loss(self, labels, outputs, trainable_vars):
    """Calculate loss (and some extra evaluation metrics)."""

    loss = F.cross_entropy(outputs, labels)  # port: tf.losses.softmax_cross_entropy
    loss += FLAGS.loss_w_dcy * sum(0.5 * (var ** 2).sum() for var in trainable_vars)  # port: l2_loss
    accuracy = (labels.argmax(dim=1) == outputs.argmax(dim=1)).float().mean()
    metrics = {'accuracy': accuracy}

    return loss, metrics

  def setup_lrn_rate(self, global_step):
    """Setup the learning rate (and number of training iterations)."""

    nb_epochs = 160
    idxs_epoch = [40, 80, 120]
    decay_rates = [1.0, 0.1, 0.01, 0.001]
    batch_size = FLAGS.batch_size * mgw.size()  # port: mgw.size() is 1 in a single process
    lrn_rate = setup_lrn_rate_piecewise_constant(global_step, batch_size, idxs_epoch, decay_rates)
    nb_iters = int(FLAGS.nb_smpls_train * nb_epochs * FLAGS.nb_epochs_rat / batch_size)

    return lrn_rate, nb_iters

  @property
  def model_name(self):
    """Model's name."""

    return 'convnet'

  @property
  def dataset_name(self):
    """Dataset's name."""

    return 'fmnist'
