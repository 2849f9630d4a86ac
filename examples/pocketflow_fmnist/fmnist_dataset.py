"""PocketFlow's ``datasets/fmnist_dataset.py`` ported to torch.

Every function and method keeps its name and arguments; ``# port:`` marks what changed:
TensorFlow ops became torch ops, ``tf.app.flags`` became ``absl.flags`` (the same API), and
``build`` returns torch datasets where PocketFlow returned tf.data iterators (the learners
shard, shuffle, batch and prefetch them).
"""
import gzip
import os

import numpy as np
import torch
import torch.nn.functional as F
from absl import flags  # port: tf.app.flags
from torch.utils.data import Dataset, Subset  # port: datasets.abstract_dataset.AbstractDataset

FLAGS = flags.FLAGS

flags.DEFINE_integer('nb_classes', 10, '# of classes')
flags.DEFINE_integer('nb_smpls_train', 60000, '# of samples for training')
flags.DEFINE_integer('nb_smpls_val', 5000, '# of samples for validation')
flags.DEFINE_integer('nb_smpls_eval', 10000, '# of samples for evaluation')
flags.DEFINE_integer('batch_size', 128, 'batch size per GPU for training')
flags.DEFINE_integer('batch_size_eval', 100, 'batch size for evaluation')

# Fashion-MNIST specifications
IMAGE_HEI = 28
IMAGE_WID = 28
IMAGE_CHN = 1


def load_mnist(image_file, label_file):
  """Load images and labels from *.gz files (unchanged: numpy)."""

  with gzip.open(label_file, 'rb') as i_file:
    labels = np.frombuffer(i_file.read(), dtype=np.uint8, offset=8)
  with gzip.open(image_file, 'rb') as i_file:
    images = np.frombuffer(i_file.read(), dtype=np.uint8, offset=16)
    image_size = IMAGE_HEI * IMAGE_WID * IMAGE_CHN
    assert images.size == image_size * len(labels)
    images = images.reshape(len(labels), image_size)

  return images, labels


def per_image_standardization(image):
  """port: tf.image.per_image_standardization."""
  return (image - image.mean()) / max(float(image.std(unbiased=False)), 1.0 / image.numel() ** 0.5)


def parse_fn(image, label, is_train):
  """Parse an (image, label) pair and apply data augmentation if needed."""

  # data parsing
  label = F.one_hot(torch.as_tensor(label, dtype=torch.int64).reshape([]), FLAGS.nb_classes)
  label = label.float()  # port: tf.one_hot's float32
  image = torch.tensor(image, dtype=torch.float32).reshape(
    [IMAGE_CHN, IMAGE_HEI, IMAGE_WID])  # port: torch's channels-first layout
  image = per_image_standardization(image)

  # data augmentation
  if is_train:
    image = F.pad(image, [4, 4, 4, 4])  # port: tf.image.resize_image_with_crop_or_pad(+8)
    top, left = torch.randint(0, 9, [2]).tolist()  # port: tf.random_crop
    image = image[:, top:top + IMAGE_HEI, left:left + IMAGE_WID]
    if torch.rand([]) < 0.5:  # port: tf.image.random_flip_left_right
      image = image.flip(-1)

  return image, label


class FMnistDataset(Dataset):
  '''Fashion-MNIST dataset.'''

  def __init__(self, is_train):
    """Constructor function.

    Args:
    * is_train: whether to construct the training subset
    """

    # initialize the base class
    super(FMnistDataset, self).__init__()
    self.is_train = is_train  # port: set by AbstractDataset.__init__(is_train)

    # port: local files only (--data_disk=hdfs is refused: mount HDFS instead)
    assert FLAGS.data_dir_local is not None, '<FLAGS.data_dir_local> must not be None'
    data_dir = FLAGS.data_dir_local

    # setup paths to image & label files, and read in images & labels
    if is_train:
      self.batch_size = FLAGS.batch_size
      image_file = os.path.join(data_dir, 'train-images-idx3-ubyte.gz')
      label_file = os.path.join(data_dir, 'train-labels-idx1-ubyte.gz')
    else:
      self.batch_size = FLAGS.batch_size_eval
      image_file = os.path.join(data_dir, 't10k-images-idx3-ubyte.gz')
      label_file = os.path.join(data_dir, 't10k-labels-idx1-ubyte.gz')
    self.images, self.labels = load_mnist(image_file, label_file)
    self.parse_fn = lambda x, y: parse_fn(x, y, is_train)

  def build(self, enbl_trn_val_split=False):
    """Build the dataset(s) (port: torch datasets, not iterators).

    Returns:
    * dataset_trn, dataset_val: the training & validation subsets
      OR
    * dataset: the chosen subset (training OR testing)
    """

    # create training & validation subsets separately (port: dataset.take / dataset.skip)
    if self.is_train and enbl_trn_val_split:
      dataset_val = Subset(self, range(FLAGS.nb_smpls_val))
      dataset_trn = Subset(self, range(FLAGS.nb_smpls_val, len(self)))
      return dataset_trn, dataset_val

    return self

  def __len__(self):  # port: what tf.data.Dataset.from_tensor_slices knew
    return len(self.labels)

  def __getitem__(self, index):  # port: dataset.map(self.parse_fn)
    return self.parse_fn(self.images[index], self.labels[index])
