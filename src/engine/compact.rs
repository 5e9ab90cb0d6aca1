//! A list sized exactly to its items.
//!
//! Every customer carries a handful of short lists (journeys, orders, skus, tickets). A `Vec`
//! is 24 bytes and grows by doubling — a second journey reserves room for four. Here the list
//! is 16 bytes and holds exactly its items; adding one reallocates, which is cheap at these
//! lengths and keeps memory per customer flat as customers number in the millions.

use std::ops::{Deref, DerefMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compact<T>(Box<[T]>);

impl<T> Default for Compact<T> {
    fn default() -> Compact<T> {
        Compact(Box::default())
    }
}

impl<T> Deref for Compact<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T> DerefMut for Compact<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

impl<T> From<Vec<T>> for Compact<T> {
    fn from(v: Vec<T>) -> Compact<T> {
        Compact(v.into_boxed_slice())
    }
}

impl<T> Compact<T> {
    pub fn into_vec(self) -> Vec<T> {
        self.0.into_vec()
    }

    /// Applies `f` to the items as a `Vec`, then shrinks back to exact size.
    fn edit<R>(&mut self, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
        let mut v = std::mem::take(&mut self.0).into_vec();
        let r = f(&mut v);
        self.0 = v.into_boxed_slice();
        r
    }

    pub fn push(&mut self, item: T) {
        self.edit(|v| {
            v.reserve_exact(1);
            v.push(item);
        });
    }

    pub fn insert(&mut self, index: usize, item: T) {
        self.edit(|v| {
            v.reserve_exact(1);
            v.insert(index, item);
        });
    }

    pub fn remove(&mut self, index: usize) -> T {
        self.edit(|v| v.remove(index))
    }

    pub fn retain(&mut self, f: impl FnMut(&T) -> bool) {
        if !self.is_empty() {
            self.edit(|v| v.retain(f));
        }
    }
}

impl Compact<Box<str>> {
    /// Adds `value` in sorted position unless present.
    pub fn insert_sorted(&mut self, value: &str) {
        if let Err(i) = self.binary_search_by(|v| (**v).cmp(value)) {
            self.insert(i, value.into());
        }
    }

    pub fn contains_str(&self, value: &str) -> bool {
        self.iter().any(|v| &**v == value)
    }
}

impl<T: serde::Serialize> serde::Serialize for Compact<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Compact<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Compact<T>, D::Error> {
        Vec::<T>::deserialize(d).map(Compact::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_exactly_its_items() {
        let mut c: Compact<Box<str>> = Compact::default();
        c.insert_sorted("tripod");
        c.insert_sorted("camera");
        c.insert_sorted("camera");
        assert_eq!(
            c.iter().map(|s| &**s).collect::<Vec<_>>(),
            ["camera", "tripod"]
        );
        c.retain(|s| &**s != "camera");
        assert_eq!(c.len(), 1);
        assert_eq!(&*c.remove(0), "tripod");
        assert!(c.is_empty());
        assert_eq!(std::mem::size_of::<Compact<u64>>(), 16);
    }
}

/// A list most customers never have: one pointer (8 bytes, none allocated while empty)
/// instead of [`Compact`]'s two.
// The box is the point: a thin pointer where `Vec` (24 bytes) or a boxed slice (16) is wider.
#[allow(clippy::box_collection)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sparse<T>(Option<Box<Vec<T>>>);

impl<T> Default for Sparse<T> {
    fn default() -> Sparse<T> {
        Sparse(None)
    }
}

impl<T> Deref for Sparse<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl<T> DerefMut for Sparse<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.0 {
            Some(v) => v.as_mut_slice(),
            None => &mut [],
        }
    }
}

impl<T> From<Vec<T>> for Sparse<T> {
    fn from(v: Vec<T>) -> Sparse<T> {
        Sparse((!v.is_empty()).then(|| Box::new(v)))
    }
}

impl<T> Sparse<T> {
    pub fn push(&mut self, item: T) {
        self.0.get_or_insert_default().push(item);
    }

    /// The item at `index`, taken out; `None` past the end.
    pub fn remove(&mut self, index: usize) -> Option<T> {
        let v = self.0.as_mut().filter(|v| index < v.len())?;
        let item = v.remove(index);
        if v.is_empty() {
            self.0 = None;
        }
        Some(item)
    }

    pub fn retain(&mut self, f: impl FnMut(&T) -> bool) {
        if let Some(v) = &mut self.0 {
            v.retain(f);
            if v.is_empty() {
                self.0 = None;
            }
        }
    }
}
