"""The dispatch table: one handler per endpoint type (frontend/s3/router.py).

An endpoint missing here is answered NotImplemented by the app, never a 500.
"""

from __future__ import annotations

from frontend.s3 import router
from frontend.s3.handlers import bucket, configuration, delete_objects, listing, multipart, objects

HANDLERS = {
    router.ListBuckets: bucket.list_buckets,
    router.CreateBucket: bucket.create_bucket,
    router.HeadBucket: bucket.head_bucket,
    router.DeleteBucket: bucket.delete_bucket,
    router.GetBucketLocation: bucket.get_bucket_location,
    router.GetBucketVersioning: bucket.get_bucket_versioning,
    router.ListObjects: listing.list_objects,
    router.ListObjectsV2: listing.list_objects_v2,
    router.ListMultipartUploads: listing.list_multipart_uploads,
    router.ListObjectVersions: listing.list_object_versions,
    router.DeleteObjects: delete_objects.delete_objects,
    router.PutObject: objects.put_object,
    router.CopyObject: objects.copy_object,
    router.GetObject: objects.get_object,
    router.HeadObject: objects.head_object,
    router.DeleteObject: objects.delete_object,
    router.CreateMultipartUpload: multipart.create_multipart_upload,
    router.UploadPart: multipart.upload_part,
    router.UploadPartCopy: multipart.upload_part_copy,
    router.CompleteMultipartUpload: multipart.complete_multipart_upload,
    router.AbortMultipartUpload: multipart.abort_multipart_upload,
    router.ListParts: multipart.list_parts,
    router.GetBucketConfiguration: configuration.get_bucket_configuration,
    router.GetBucketAcl: configuration.get_bucket_acl,
    router.PutBucketAcl: configuration.put_bucket_acl,
    router.GetObjectAcl: configuration.get_object_acl,
    router.PutObjectAcl: configuration.put_object_acl,
    router.GetObjectTagging: configuration.get_object_tagging,
    router.DeleteObjectTagging: configuration.delete_object_tagging,
}
