//! Zero-shot classification: each class is the average of its prompts'
//! normalised embeddings, re-normalised (CLIP_benchmark); an image is
//! classified by its most similar class.

use anyhow::bail;

use super::{EvalSuite, Scored, dot, ranking};

/// The `zero_shot` suite: `zero_shot.top1`, `.top5`, `.mean_per_class_recall`
/// over the labelled images.
pub struct ZeroShotSuite;

impl EvalSuite for ZeroShotSuite {
    const NAME: &'static str = "zero_shot";

    fn score(s: &Scored<'_>) -> anyhow::Result<Vec<(String, f64)>> {
        let classes = class_embeddings(s.prompts, s.templates);
        let (images, labels): (Vec<&[f32]>, Vec<usize>) =
            s.labels.iter().zip(s.images).filter_map(|(label, image)| label.map(|l| (image.as_slice(), l))).unzip();
        if let Some(l) = labels.iter().find(|&&l| l >= classes.len()) {
            bail!("an image has label {l} but the ingest lists {} classes", classes.len());
        }
        Ok(evaluate(&images, &labels, &classes).map_or_else(Vec::new, |z| {
            vec![
                ("zero_shot.top1".to_owned(), z.top1),
                ("zero_shot.top5".to_owned(), z.top5),
                ("zero_shot.mean_per_class_recall".to_owned(), z.mean_per_class_recall),
            ]
        }))
    }
}

/// Class embeddings from prompt embeddings laid out class-major
/// (`prompts[c * templates + t]`): mean over templates, then L2-normalised.
pub fn class_embeddings(prompts: &[Vec<f32>], templates: usize) -> Vec<Vec<f32>> {
    prompts
        .chunks(templates.max(1))
        .map(|rows| {
            let mut mean = vec![0f32; rows[0].len()];
            for row in rows {
                mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
            }
            let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                mean.iter_mut().for_each(|v| *v /= norm);
            }
            mean
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZeroShot {
    pub top1: f64,
    pub top5: f64,
    /// Recall averaged over the classes that have images (balanced accuracy).
    pub mean_per_class_recall: f64,
}

/// Scores images (with their true class labels) against class embeddings.
/// `None` when there is no image to score.
pub fn evaluate<R: AsRef<[f32]>>(images: &[R], labels: &[usize], classes: &[Vec<f32>]) -> Option<ZeroShot> {
    if images.is_empty() || classes.is_empty() {
        return None;
    }
    let (mut top1, mut top5) = (0usize, 0usize);
    let mut per_class = vec![(0usize, 0usize); classes.len()]; // (correct, total)
    for (image, &label) in images.iter().zip(labels) {
        let scores: Vec<f32> = classes.iter().map(|c| dot(image.as_ref(), c)).collect();
        let order = ranking(&scores);
        let hit1 = order[0] == label;
        top1 += usize::from(hit1);
        top5 += usize::from(order.iter().take(5).any(|&c| c == label));
        per_class[label].0 += usize::from(hit1);
        per_class[label].1 += 1;
    }
    let n = images.len() as f64;
    let present: Vec<f64> = per_class.iter().filter(|(_, t)| *t > 0).map(|(c, t)| *c as f64 / *t as f64).collect();
    Some(ZeroShot {
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        mean_per_class_recall: present.iter().sum::<f64>() / present.len() as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_embeddings_average_then_renormalise() {
        let prompts = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 0.0], vec![1.0, 0.0]];
        let classes = class_embeddings(&prompts, 2);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((classes[0][0] - h).abs() < 1e-6 && (classes[0][1] - h).abs() < 1e-6);
        assert_eq!(classes[1], vec![1.0, 0.0]);
    }

    #[test]
    fn hand_computed_accuracies() {
        // Three classes on axes; four images: two right, one wrong (class 2
        // predicted for a class-0 image), one tie between classes 0 and 1
        // that the lower index wins.
        let classes = vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0], vec![0.0, 0.0, 1.0]];
        let images = vec![vec![0.9, 0.1, 0.0], vec![0.0, 1.0, 0.0], vec![0.1, 0.0, 0.9], vec![0.5, 0.5, 0.0]];
        let labels = vec![0, 1, 0, 1];
        let r = evaluate(&images, &labels, &classes).unwrap();
        assert_eq!(r.top1, 0.5);
        assert_eq!(r.top5, 1.0, "three classes: everything is in the top 5");
        // class 0: 1 of 2; class 1: 1 of 2 (the tie goes to class 0); class 2 has no images.
        assert_eq!(r.mean_per_class_recall, 0.5);
        assert!(evaluate::<Vec<f32>>(&[], &[], &classes).is_none());
    }
}
